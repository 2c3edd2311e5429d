"""Write examples/data/demo_preferences.jsonl: the demo's preference pairs, reproducibly (seeded).

The preference is deliberately clear and learnable: the chosen answer is correct, complete and
polite; the rejected one is curt, wrong, dismissive or off-topic. Material is hand-written here
(facts, definitions, how-tos, short code questions) plus generated arithmetic; every pair asks a
different final question, some after one or two earlier turns, some under a system turn.
Answers are short so that LoRA-DPO on the demo runs in minutes on two CPU cores.

    python scripts/make_demo_data.py [--out examples/data/demo_preferences.jsonl] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

# (question, correct answer, wrong answer). The correct answer is the core of the chosen
# response; the wrong one is stated curtly in some rejected responses.
FACTS = [
    ("What is the capital of France?", "The capital of France is Paris.", "Lyon."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo.", "Kyoto, obviously."),
    ("What is the capital of Australia?", "The capital of Australia is Canberra, not Sydney as many people think.", "Sydney."),
    ("What is the capital of Canada?", "The capital of Canada is Ottawa, in the province of Ontario.", "Toronto."),
    ("What is the capital of Brazil?", "The capital of Brazil is Brasília, a planned city inaugurated in 1960.", "Rio de Janeiro."),
    ("What is the capital of Egypt?", "The capital of Egypt is Cairo, on the Nile.", "Alexandria."),
    ("What is the capital of Kenya?", "The capital of Kenya is Nairobi.", "Mombasa."),
    ("What is the capital of Spain?", "The capital of Spain is Madrid.", "Barcelona."),
    ("What is the capital of Germany?", "The capital of Germany is Berlin.", "Munich."),
    ("What is the capital of Italy?", "The capital of Italy is Rome.", "Milan."),
    ("What is the capital of Turkey?", "The capital of Turkey is Ankara; Istanbul is its largest city.", "Istanbul."),
    ("What is the capital of India?", "The capital of India is New Delhi.", "Mumbai."),
    ("What is the capital of Argentina?", "The capital of Argentina is Buenos Aires.", "Córdoba."),
    ("What is the capital of South Korea?", "The capital of South Korea is Seoul.", "Busan."),
    ("What is the capital of Norway?", "The capital of Norway is Oslo.", "Bergen."),
    ("What is the capital of Portugal?", "The capital of Portugal is Lisbon.", "Porto."),
    ("What is the capital of Mexico?", "The capital of Mexico is Mexico City.", "Cancún."),
    ("What is the capital of Switzerland?", "Switzerland's federal city, and in practice its capital, is Bern.", "Zurich."),
    ("Which planet is closest to the Sun?", "Mercury is the planet closest to the Sun.", "Venus."),
    ("Which planet is the largest in our solar system?", "Jupiter is the largest planet in our solar system.", "Saturn."),
    ("Which planet is known as the Red Planet?", "Mars is called the Red Planet because of the iron oxide on its surface.", "Jupiter."),
    ("How many planets are in our solar system?", "There are eight planets in our solar system: Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus and Neptune.", "Nine."),
    ("At what temperature does water boil at sea level?", "At sea level, water boils at 100 °C, which is 212 °F.", "50 degrees."),
    ("At what temperature does water freeze?", "Pure water freezes at 0 °C, which is 32 °F, at normal pressure.", "10 degrees."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au, from the Latin word aurum.", "Go."),
    ("What is the chemical symbol for sodium?", "The chemical symbol for sodium is Na, from the Latin natrium.", "So."),
    ("What is the chemical formula of water?", "The chemical formula of water is H2O: two hydrogen atoms and one oxygen atom.", "HO2."),
    ("What gas do plants absorb from the air?", "Plants absorb carbon dioxide (CO2) from the air and use it in photosynthesis.", "Oxygen."),
    ("What is the largest ocean on Earth?", "The Pacific Ocean is the largest ocean on Earth.", "The Atlantic."),
    ("What is the longest river in South America?", "The Amazon is the longest river in South America.", "The Orinoco."),
    ("What is the tallest mountain on Earth?", "Mount Everest is the tallest mountain above sea level, at about 8,849 metres.", "K2."),
    ("What is the largest desert in Africa?", "The Sahara is the largest desert in Africa.", "The Gobi."),
    ("How many continents are there?", "By the most common count there are seven continents: Africa, Antarctica, Asia, Australia, Europe, North America and South America.", "Five."),
    ("How many days are in a leap year?", "A leap year has 366 days; the extra day is February 29.", "365."),
    ("How many minutes are in an hour?", "There are 60 minutes in an hour.", "100."),
    ("How many sides does a hexagon have?", "A hexagon has six sides.", "Eight."),
    ("How many legs does a spider have?", "A spider has eight legs.", "Six."),
    ("How many bones are in the adult human body?", "An adult human body has 206 bones.", "150."),
    ("What is the hardest natural material?", "Diamond is the hardest natural material.", "Iron."),
    ("Who wrote 'Romeo and Juliet'?", "William Shakespeare wrote 'Romeo and Juliet', probably around 1595.", "Charles Dickens."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa in the early 1500s.", "Picasso."),
    ("Who developed the theory of relativity?", "Albert Einstein developed the theory of relativity: special relativity in 1905 and general relativity in 1915.", "Isaac Newton."),
    ("Who was the first person to walk on the Moon?", "Neil Armstrong was the first person to walk on the Moon, on July 20, 1969.", "Yuri Gagarin."),
    ("In which year did World War II end?", "World War II ended in 1945.", "1939."),
    ("In which year did the Berlin Wall fall?", "The Berlin Wall fell in 1989.", "1975."),
    ("What is the speed of light?", "Light travels at about 300,000 kilometres per second in a vacuum (exactly 299,792,458 m/s).", "About 300 km per hour."),
    ("What is the largest mammal?", "The blue whale is the largest mammal, and the largest animal known to have lived.", "The elephant."),
    ("What is the main language spoken in Brazil?", "The main language spoken in Brazil is Portuguese.", "Spanish."),
    ("Which organ pumps blood through the body?", "The heart pumps blood through the body.", "The liver."),
    ("What do bees make?", "Bees make honey from flower nectar, and also beeswax.", "Milk."),
    ("What is the smallest prime number?", "The smallest prime number is 2, and it is the only even prime.", "1."),
    ("What is the boiling point of water in Fahrenheit?", "Water boils at 212 °F at sea level.", "100 °F."),
    ("Which metal is liquid at room temperature?", "Mercury is the metal that is liquid at room temperature.", "Aluminium."),
    ("What is the currency of Japan?", "The currency of Japan is the yen.", "The won."),
    ("What is the currency of the United Kingdom?", "The currency of the United Kingdom is the pound sterling.", "The euro."),
    ("How many strings does a standard guitar have?", "A standard guitar has six strings.", "Four."),
    ("What colour do you get by mixing blue and yellow?", "Mixing blue and yellow paint gives green.", "Purple."),
    ("Which animal is known as the king of the jungle?", "The lion is often called the king of the jungle.", "The giraffe."),
    ("What is the freezing point of water in Fahrenheit?", "Water freezes at 32 °F.", "0 °F."),
    ("Which is the closest star to Earth?", "The Sun is the closest star to Earth; the next closest is Proxima Centauri.", "The Moon."),
    ("What is the capital of Greece?", "The capital of Greece is Athens.", "Sparta."),
    ("What is the capital of Poland?", "The capital of Poland is Warsaw.", "Kraków."),
    ("What is the capital of Vietnam?", "The capital of Vietnam is Hanoi.", "Ho Chi Minh City."),
    ("What is the capital of Morocco?", "The capital of Morocco is Rabat.", "Casablanca."),
    ("Which gas do humans need to breathe to live?", "Humans need oxygen; the lungs pass it into the blood.", "Helium."),
    ("How many hours are in a day?", "There are 24 hours in a day.", "12."),
    ("What is the largest country by area?", "Russia is the largest country by area, at about 17 million square kilometres.", "Canada."),
    ("Who invented the telephone?", "Alexander Graham Bell is credited with inventing the telephone; he patented it in 1876.", "Thomas Edison."),
    ("What is the square root of 81?", "The square root of 81 is 9, because 9 × 9 = 81.", "8."),
    ("Which instrument has 88 keys?", "A standard piano has 88 keys.", "The violin."),
    ("What is the main ingredient of guacamole?", "The main ingredient of guacamole is avocado.", "Cucumber."),
    ("Which bird is a symbol of peace?", "The dove is a common symbol of peace.", "The crow."),
]

DEFINITIONS = [
    ("What is photosynthesis?", "Photosynthesis is the process by which plants use sunlight, water and carbon dioxide to make glucose and release oxygen.", "It's how plants sleep."),
    ("What is an algorithm?", "An algorithm is a finite, step-by-step procedure for solving a problem or performing a computation.", "A kind of music."),
    ("What is gravity?", "Gravity is the force by which masses attract each other; it keeps us on the ground and the planets in orbit.", "Wind pushing down."),
    ("What is inflation in economics?", "Inflation is the general rise of prices over time, which means each unit of money buys less.", "When balloons get bigger."),
    ("What is a noun?", "A noun is a word that names a person, place, thing or idea, such as 'teacher', 'city' or 'freedom'.", "A verb."),
    ("What is a verb?", "A verb is a word that describes an action, state or occurrence, such as 'run', 'be' or 'happen'.", "A describing word."),
    ("What is an adjective?", "An adjective is a word that describes a noun, such as 'red', 'tall' or 'happy'.", "An action word."),
    ("What is democracy?", "Democracy is a system of government in which citizens hold power, usually by electing representatives in free elections.", "Rule by one king."),
    ("What is an atom?", "An atom is the smallest unit of a chemical element, made of a nucleus of protons and neutrons surrounded by electrons.", "A tiny planet."),
    ("What is DNA?", "DNA (deoxyribonucleic acid) is the molecule that carries the genetic instructions of living organisms.", "A type of vitamin."),
    ("What is a prime number?", "A prime number is a whole number greater than 1 whose only divisors are 1 and itself, like 2, 3, 5 and 7.", "Any odd number."),
    ("What is a variable in programming?", "A variable is a named place in memory that stores a value, which the program can read and change.", "A bug."),
    ("What is a function in programming?", "A function is a named, reusable block of code that takes inputs, performs a task and can return a result.", "A comment."),
    ("What is machine learning?", "Machine learning is a field of computer science in which programs learn patterns from data instead of following hand-written rules.", "Robots building cars."),
    ("What is a synonym?", "A synonym is a word with the same or nearly the same meaning as another, like 'big' and 'large'.", "An opposite word."),
    ("What is an antonym?", "An antonym is a word with the opposite meaning of another, like 'hot' and 'cold'.", "A word that rhymes."),
    ("What is a metaphor?", "A metaphor is a figure of speech that describes something as if it were something else, such as 'time is money'.", "A long poem."),
    ("What is evaporation?", "Evaporation is the process by which a liquid turns into a gas, like water drying from a puddle in the sun.", "Water freezing."),
    ("What is an ecosystem?", "An ecosystem is a community of living things interacting with each other and with their physical environment.", "A computer network."),
    ("What is a habitat?", "A habitat is the natural home of an animal or plant, where it finds food, water and shelter.", "A habit."),
    ("What is a molecule?", "A molecule is a group of two or more atoms held together by chemical bonds, such as O2 or H2O.", "A small mole."),
    ("What is renewable energy?", "Renewable energy comes from sources that are naturally replenished, such as sunlight, wind and flowing water.", "Energy from coal."),
    ("What is a fraction?", "A fraction represents a part of a whole, written as a numerator over a denominator, like 3/4.", "A broken number."),
    ("What is an API?", "An API (application programming interface) is a defined way for programs to talk to each other, such as functions or web endpoints they can call.", "A type of apple."),
    ("What is a database?", "A database is an organised collection of data that can be stored, searched and updated efficiently.", "A big spreadsheet printer."),
    ("What is the internet?", "The internet is a global network of computers that exchange data using shared protocols such as TCP/IP.", "A website."),
    ("What is a compiler?", "A compiler is a program that translates source code written in a programming language into machine code or another lower-level form.", "A music playlist."),
    ("What is an operating system?", "An operating system is the software that manages a computer's hardware and runs programs, such as Linux, Windows or macOS.", "A keyboard."),
    ("What is a virus in biology?", "A virus is a tiny infectious agent that can only reproduce inside the living cells of an organism.", "A kind of bacteria that helps digestion."),
    ("What is climate?", "Climate is the average weather of a region over a long period, usually thirty years or more.", "Today's weather."),
    ("What is a democracy's constitution?", "A constitution is the set of fundamental rules that defines how a state is governed and what rights its citizens have.", "A health check."),
    ("What is a haiku?", "A haiku is a short Japanese poem of three lines with five, seven and five syllables.", "A kind of sushi."),
    ("What is a mammal?", "A mammal is a warm-blooded animal with hair or fur that feeds its young with milk, such as dogs, whales and humans.", "Any animal that swims."),
    ("What is friction?", "Friction is the force that resists motion when two surfaces slide against each other.", "A type of fruit."),
    ("What is a solar eclipse?", "A solar eclipse happens when the Moon passes between the Sun and Earth and blocks the Sun's light.", "When the Sun turns off."),
    ("What is a percentage?", "A percentage is a number expressed as a fraction of 100; for example, 25% means 25 out of 100.", "A kind of graph."),
    ("What is an average (mean)?", "The mean is the sum of a set of numbers divided by how many numbers there are.", "The biggest number."),
    ("What is a loop in programming?", "A loop is a construct that repeats a block of code, for example for each item in a list or while a condition holds.", "An error message."),
    ("What is encryption?", "Encryption turns readable data into a coded form so that only someone with the right key can read it.", "Deleting files."),
    ("What is a recipe?", "A recipe is a set of instructions, with a list of ingredients, for preparing a dish.", "A receipt."),
    ("What is a biography?", "A biography is a written account of a person's life, written by someone else.", "A science book."),
    ("What is the water cycle?", "The water cycle is the continuous movement of water through evaporation, condensation, precipitation and collection.", "A washing machine program."),
    ("What is a continent?", "A continent is one of Earth's very large land masses, such as Africa or Asia.", "A big lake."),
    ("What is erosion?", "Erosion is the wearing away of rock and soil by wind, water or ice.", "Rocks growing."),
    ("What is a recession?", "A recession is a significant decline in economic activity that lasts months, often defined as two quarters of falling GDP.", "A party."),
    ("What is a hypothesis?", "A hypothesis is a testable explanation or prediction that a scientist checks with experiments or observation.", "A proven fact."),
    ("What is an island?", "An island is a piece of land completely surrounded by water.", "A mountain."),
    ("What is a calorie?", "A calorie is a unit of energy; in nutrition it measures how much energy food provides.", "A kind of sugar."),
    ("What is recursion?", "Recursion is when a function solves a problem by calling itself on smaller versions of the same problem, with a base case that stops it.", "A loop that never ends."),
    ("What is a pronoun?", "A pronoun is a word that stands in for a noun, such as 'she', 'it' or 'they'.", "A professional noun."),
]

HOWTOS = [
    ("How do I make a cup of tea?", "Boil water, put a tea bag in a cup, pour the hot water over it, let it steep for three to five minutes, then remove the bag and add milk or sugar if you like.", "Microwave the tea bag dry."),
    ("How do I boil an egg?", "Place the egg in a pot of cold water, bring it to a boil, then simmer for about 7 minutes for a firm yolk, and cool it in cold water before peeling.", "Put it in the toaster."),
    ("How can I improve my sleep?", "Keep a regular schedule, avoid screens and caffeine in the evening, keep your bedroom dark and cool, and get some daylight and exercise during the day.", "Drink more coffee."),
    ("How do I plant a tree?", "Dig a hole twice as wide as the root ball, place the tree so the root flare sits at ground level, fill with soil, press it down gently, and water it well.", "Just throw seeds anywhere."),
    ("How do I write a good email?", "Use a clear subject line, greet the reader, state your purpose in the first sentence, keep it short, and end with a polite closing and your name.", "Write everything in capitals."),
    ("How do I save money each month?", "Track your spending, set a budget, move a fixed amount to savings right after payday, and cut subscriptions you do not use.", "Spend it all first."),
    ("How do I learn a new language?", "Practise a little every day, learn the most common words first, listen to native speakers, and speak early even if you make mistakes.", "Only read the dictionary once."),
    ("How do I clean a laptop screen?", "Turn the laptop off, wipe the screen gently with a dry microfiber cloth, and for spots use a cloth slightly dampened with water, never spraying liquid directly on it.", "Use kitchen bleach."),
    ("How do I calm down when I feel stressed?", "Try slow breathing: inhale for four seconds, hold for four, exhale for six. A short walk, stretching or talking to someone you trust also helps.", "Just stop being stressed."),
    ("How do I change a flat tyre?", "Park safely, loosen the wheel nuts, raise the car with the jack, remove the nuts and wheel, fit the spare, tighten the nuts by hand, lower the car and then tighten them fully in a star pattern.", "Keep driving on it."),
    ("How do I make a paper airplane?", "Fold a sheet in half lengthwise and unfold it, fold the top corners to the centre line, fold the new edges to the centre again, fold the plane in half, and fold down each wing.", "Crumple the paper into a ball."),
    ("How do I start running as a beginner?", "Begin with short run-walk intervals three times a week, for example one minute running and two walking, and increase the running time gradually over several weeks.", "Run a marathon tomorrow."),
    ("How do I cook rice?", "Rinse one cup of rice, add it to two cups of boiling water with a pinch of salt, cover, simmer on low heat for about 18 minutes, then let it rest for five minutes.", "Eat it raw."),
    ("How do I take care of a houseplant?", "Give it the right amount of light for its kind, water it when the top of the soil is dry, make sure the pot drains, and feed it occasionally in spring and summer.", "Water it every hour."),
    ("How do I prepare for a job interview?", "Research the company, reread the job description, prepare short examples of your achievements, practise common questions, and plan to arrive a few minutes early.", "Don't bother preparing."),
    ("How do I remove a coffee stain from a shirt?", "Blot the stain right away, rinse it from the back with cold water, rub in a little liquid detergent, and wash the shirt as usual.", "Iron it into the fabric."),
    ("How do I make a good password?", "Use a long passphrase of several random words or at least 14 mixed characters, never reuse it, and keep it in a password manager.", "Use 123456."),
    ("How do I back up my photos?", "Keep at least two copies: one on an external drive and one in a cloud service, and set the backup to run automatically.", "Print them all out."),
    ("How do I study for an exam?", "Spread your study over several days, test yourself with practice questions, explain topics in your own words, and sleep well before the exam.", "Cram everything the night before."),
    ("How do I make a simple salad?", "Wash and chop lettuce, tomatoes and cucumber, put them in a bowl, and toss them with olive oil, lemon juice, salt and pepper.", "Blend the lettuce with sugar."),
    ("How do I wash my hands properly?", "Wet your hands, apply soap, scrub all surfaces including between the fingers and under the nails for at least 20 seconds, rinse, and dry with a clean towel.", "A quick splash of water is enough."),
    ("How do I focus better while working?", "Work in blocks of 25 to 50 minutes with short breaks, silence notifications, keep one task in front of you, and write down distractions to handle later.", "Keep checking your phone."),
    ("How do I introduce myself in a meeting?", "Say your name, your role, and one sentence about what you are working on or why you are there, then hand over to the next person.", "Talk about yourself for ten minutes."),
    ("How do I make pancakes?", "Whisk one cup of flour, one egg, one cup of milk, a spoon of sugar and a pinch of salt, then cook ladlefuls in a hot buttered pan until bubbles form, flip, and cook one more minute.", "Fry the flour dry."),
    ("How do I read a map?", "Find the legend to understand the symbols, check the scale for distances, orient the map with north pointing north, and locate yourself using nearby landmarks.", "Hold it upside down."),
    ("How do I write a thank-you note?", "Address the person by name, thank them for the specific gift or help, say how you will use it or what it meant to you, and close warmly.", "Just write 'thx'."),
    ("How do I keep my phone battery healthy?", "Avoid extreme heat, keep the charge mostly between 20% and 80%, and use a good-quality charger.", "Leave it in a hot car."),
    ("How do I tie a tie?", "For a simple four-in-hand knot: cross the wide end over the narrow one, wrap it around once, bring it up through the neck loop, pull it down through the front knot, and tighten.", "Use tape."),
    ("How do I make my presentation clearer?", "Start with the main point, use one idea per slide with few words, show a simple chart instead of a table, and end by repeating the key message.", "Fill every slide with text."),
    ("How do I keep bread fresh longer?", "Store it in a bread box or paper bag at room temperature for a few days, and freeze slices you will not eat soon.", "Keep it in water."),
    ("How do I politely decline an invitation?", "Thank the person for inviting you, say briefly that you cannot make it, and, if you like, suggest another time.", "Just ignore them."),
    ("How do I convert Celsius to Fahrenheit?", "Multiply the Celsius temperature by 9/5 and add 32. For example, 20 °C is 20 × 9/5 + 32 = 68 °F.", "Add 10."),
    ("How do I find the area of a rectangle?", "Multiply its length by its width. A rectangle 5 m long and 3 m wide has an area of 15 square metres.", "Add the four sides."),
    ("How do I find the average of some numbers?", "Add the numbers together and divide by how many there are. For 4, 6 and 8: (4 + 6 + 8) / 3 = 6.", "Pick the middle one always."),
    ("How do I stay hydrated?", "Drink water regularly through the day, carry a bottle, eat fruit and vegetables, and drink more when it is hot or you exercise.", "Only drink soda."),
    ("How do I set up a daily routine?", "Fix a wake-up time, plan your three most important tasks, schedule breaks and meals, and review the day briefly each evening.", "Do whatever, whenever."),
    ("How do I write a short story?", "Pick a character with a goal, add an obstacle, build to a turning point, and end with how the character has changed, in a few hundred words.", "Copy someone else's."),
    ("How do I fold a T-shirt neatly?", "Lay it flat face down, fold each side and sleeve toward the centre, then fold it in half or thirds from the bottom up.", "Roll it into a ball."),
]

CODE = [
    ("How do I reverse a string in Python?", "Use slicing with a step of -1:\n```python\ns = \"hello\"\nprint(s[::-1])  # olleh\n```", "s.reverse() works on strings."),
    ("How do I get the length of a list in Python?", "Use the built-in `len` function:\n```python\nitems = [1, 2, 3]\nprint(len(items))  # 3\n```", "items.size"),
    ("How do I read a text file in Python?", "Open it with a `with` block so it is closed automatically:\n```python\nwith open(\"notes.txt\", encoding=\"utf-8\") as f:\n    text = f.read()\n```", "file.read(\"notes.txt\")"),
    ("How do I sort a list of numbers in Python?", "Use `sorted` for a new list or `.sort()` to sort in place:\n```python\nnums = [3, 1, 2]\nprint(sorted(nums))  # [1, 2, 3]\n```", "nums.order()"),
    ("How do I check if a key exists in a Python dictionary?", "Use the `in` operator:\n```python\nages = {\"ana\": 31}\nif \"ana\" in ages:\n    print(\"found\")\n```", "ages.has(\"ana\")"),
    ("How do I write a function that adds two numbers in Python?", "Define it with `def` and return the sum:\n```python\ndef add(a, b):\n    return a + b\n\nprint(add(2, 3))  # 5\n```", "def add(a, b): print(a - b)"),
    ("How do I loop over a list with indexes in Python?", "Use `enumerate`, which yields the index and the item:\n```python\nfor i, name in enumerate([\"a\", \"b\"]):\n    print(i, name)\n```", "for i in list: print(list[i])"),
    ("How do I convert a string to an integer in Python?", "Use `int`:\n```python\nn = int(\"42\")\nprint(n + 1)  # 43\n```\nIt raises `ValueError` if the string is not a number.", "\"42\".toInt()"),
    ("How do I remove duplicates from a list in Python?", "Convert to a dict to keep the order:\n```python\nitems = [1, 2, 2, 3, 1]\nunique = list(dict.fromkeys(items))  # [1, 2, 3]\n```", "items.unique()"),
    ("How do I create a list of squares in Python?", "A list comprehension does it in one line:\n```python\nsquares = [n * n for n in range(1, 6)]  # [1, 4, 9, 16, 25]\n```", "squares = range(5) * 2"),
    ("How do I join a list of strings with commas in Python?", "Call `join` on the separator:\n```python\nprint(\", \".join([\"a\", \"b\", \"c\"]))  # a, b, c\n```", "[\"a\", \"b\"].join(\",\")"),
    ("How do I check if a number is even in Python?", "Use the remainder operator:\n```python\ndef is_even(n):\n    return n % 2 == 0\n```", "n / 2 == 0"),
    ("How do I print a variable inside a string in Python?", "Use an f-string:\n```python\nname = \"Sam\"\nprint(f\"Hello, {name}!\")\n```", "print(\"Hello, \" name)"),
    ("How do I find the maximum of a list in Python?", "Use the built-in `max`:\n```python\nprint(max([4, 9, 2]))  # 9\n```", "list.biggest()"),
    ("How do I write a file in Python?", "Open it in write mode:\n```python\nwith open(\"out.txt\", \"w\", encoding=\"utf-8\") as f:\n    f.write(\"hello\\n\")\n```", "open(\"out.txt\").write() without a mode."),
    ("How do I handle an exception in Python?", "Wrap the risky code in `try` and catch the specific error:\n```python\ntry:\n    x = int(\"abc\")\nexcept ValueError:\n    x = 0\n```", "Errors can't be handled."),
    ("How do I get the current date in Python?", "Use the `datetime` module:\n```python\nfrom datetime import date\nprint(date.today())\n```", "import time; time.date()"),
    ("How do I split a sentence into words in Python?", "Call `split` with no arguments to split on whitespace:\n```python\nwords = \"the quick fox\".split()  # ['the', 'quick', 'fox']\n```", "sentence.words"),
    ("How do I count how often each word appears in Python?", "Use `collections.Counter`:\n```python\nfrom collections import Counter\nprint(Counter(\"a b a\".split()))  # Counter({'a': 2, 'b': 1})\n```", "len(words)"),
    ("How do I make a string uppercase in Python?", "Call `.upper()`:\n```python\nprint(\"hello\".upper())  # HELLO\n```", "upper(\"hello\")"),
    ("How do I sum a list of numbers in Python?", "Use the built-in `sum`:\n```python\nprint(sum([1, 2, 3]))  # 6\n```", "[1, 2, 3].total"),
    ("How do I install a package with pip?", "Run this in a terminal:\n```bash\npip install requests\n```\nInside a virtual environment it installs only for that project.", "Download random .exe files."),
    ("How do I create a virtual environment in Python?", "Use the built-in `venv` module, then activate it:\n```bash\npython -m venv .venv\nsource .venv/bin/activate\n```", "pip install venv-everything"),
    ("How do I get the last element of a list in Python?", "Use index -1:\n```python\nitems = [1, 2, 3]\nprint(items[-1])  # 3\n```", "items[len(items)]"),
    ("How do I check the type of a variable in Python?", "Use `type` to see it, or `isinstance` to test it:\n```python\nx = 3.5\nprint(type(x), isinstance(x, float))\n```", "x.kind"),
    ("How do I write a while loop in Python?", "Repeat while a condition holds:\n```python\nn = 3\nwhile n > 0:\n    print(n)\n    n -= 1\n```", "while: forever"),
    ("How do I define a class in Python?", "Use `class` with an `__init__` method:\n```python\nclass Dog:\n    def __init__(self, name):\n        self.name = name\n```", "function Dog() {}"),
    ("How do I select all rows from a SQL table?", "Use `SELECT *`:\n```sql\nSELECT * FROM users;\n```", "GET users"),
    ("How do I filter rows in SQL?", "Add a `WHERE` clause:\n```sql\nSELECT name FROM users WHERE age >= 18;\n```", "SELECT name IF age >= 18"),
    ("How do I print 'Hello, world!' in JavaScript?", "Use `console.log`:\n```javascript\nconsole.log(\"Hello, world!\");\n```", "print Hello world"),
    ("How do I check my Git status?", "Run this in the repository:\n```bash\ngit status\n```\nIt lists changed, staged and untracked files.", "git delete"),
    ("How do I undo my last Git commit but keep the changes?", "Move the branch back one commit, keeping the changes staged:\n```bash\ngit reset --soft HEAD~1\n```", "Delete the .git folder."),
    ("How do I list files in a directory on Linux?", "Use `ls`; add `-l` for details and `-a` for hidden files:\n```bash\nls -la\n```", "dir /everything"),
    ("How do I round a number to two decimals in Python?", "Use `round`:\n```python\nprint(round(3.14159, 2))  # 3.14\n```", "int(3.14159)"),
    ("How do I merge two dictionaries in Python?", "Use the `|` operator (Python 3.9+):\n```python\na = {\"x\": 1}\nb = {\"y\": 2}\nprint(a | b)  # {'x': 1, 'y': 2}\n```", "a + b"),
    ("How do I generate a random number in Python?", "Use the `random` module:\n```python\nimport random\nprint(random.randint(1, 6))  # 1 to 6 inclusive\n```", "random()"),
    ("How do I write a comment in Python?", "Start the line with `#`:\n```python\n# this line is a comment\nx = 1  # so is this part\n```", "// comment"),
    ("How do I check if a string contains a word in Python?", "Use the `in` operator:\n```python\nprint(\"cat\" in \"concatenate\")  # True\n```", "\"concatenate\".has(\"cat\")"),
    ("How do I get unique values from a list in Python?", "Convert it to a set (the order is not kept):\n```python\nprint(set([1, 1, 2]))  # {1, 2}\n```", "list.distinct"),
    ("How do I pause a Python program for two seconds?", "Use `time.sleep`:\n```python\nimport time\ntime.sleep(2)\n```", "wait(2000)"),
]

# Rejected responses that ignore the question.
OFF_TOPIC = [
    "I like turtles.",
    "Did you see the football game last night?",
    "My favourite colour is purple.",
    "Pizza is better than pasta.",
    "I'm thinking about getting a new bike.",
    "Cats sleep about sixteen hours a day.",
    "Anyway, it's raining here.",
    "Let's talk about movies instead.",
    "Bananas are berries, you know.",
    "I had a weird dream last night.",
    "Whatever. Have you tried jazz?",
    "Not sure, but I love Mondays.",
]
DISMISSIVE = [
    "Look it up yourself.",
    "Why would I know that?",
    "Not my problem.",
    "Google it.",
    "Ugh, boring question.",
    "Figure it out.",
    "No idea. Next.",
    "Ask someone else.",
]
# Long rejected answers: rambling, off-topic and wrong, so the shorter answer sometimes wins and
# the preference cannot be learned as "longer is better".
RAMBLE_OPENERS = [
    "Honestly, who cares?", "Ugh, fine.", "Wow, what a question.", "Let me think, or actually, let me not.",
    "Okay, whatever you say.", "Hmm.",
]
RAMBLE_SENTENCES = [
    "I was going to tell you about my cousin's wedding, which was a disaster from start to finish.",
    "The cake fell over and the band played the wrong songs all night.",
    "Also, I've been meaning to reorganise my sock drawer by colour and mood.",
    "My neighbour's dog barks every morning at exactly six, which is very annoying.",
    "People ask me things all day and it gets tiring, you know.",
    "There's a new café downtown, but their coffee is too expensive for what it is.",
    "I read half a book about pirates last week and never finished it.",
    "It reminds me of a film I saw once, but I forget the name and the plot.",
    "Traffic was terrible today, by the way, just terrible.",
    "I don't really see why anyone needs to know this.",
]
RAMBLE_ENDINGS = ["Anyway, it's {wrong}", "Probably {wrong} or something.", "I think it's {wrong} Whatever.", "Just say {wrong}"]
CURT_SUFFIX = ["", " Obviously.", " Duh.", " Whatever.", " Next."]
OPENERS = [
    "Sure!", "Of course!", "Good question!", "Happy to help.", "Great question.", "Certainly!",
    "Glad you asked.", "Here you go:", "Absolutely.", "Thanks for asking!",
]
CLOSERS = [
    "", "", "I hope this helps!", "Let me know if you have any other questions.",
    "Feel free to ask if anything is unclear.", "Happy to explain more if you like.",
]
SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a friendly tutor who explains things clearly to students.",
    "You are a polite and knowledgeable assistant. Answer accurately.",
    "You are a patient teacher. Keep answers short and correct.",
    "You are a helpful coding and general-knowledge assistant.",
]
FOLLOW_UP_PREFIXES = ["", "", "Thanks! ", "Great, thank you. ", "One more question: ", "Okay. ", "Got it. Next: "]


def arithmetic_items(rng: random.Random, n: int) -> list[tuple[str, str, str]]:
    """Generated arithmetic questions with worked answers and off-by-some wrong answers."""
    items: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    while len(items) < n:
        kind = rng.choice(["add", "sub", "mul", "div", "pct", "word"])
        if kind == "add":
            a, b = rng.randint(12, 899), rng.randint(12, 899)
            q, value, work = f"What is {a} + {b}?", a + b, f"{a} + {b} = {a + b}."
        elif kind == "sub":
            a, b = sorted((rng.randint(10, 999), rng.randint(10, 999)), reverse=True)
            q, value, work = f"What is {a} - {b}?", a - b, f"{a} - {b} = {a - b}."
        elif kind == "mul":
            a, b = rng.randint(3, 29), rng.randint(3, 19)
            q, value, work = f"What is {a} times {b}?", a * b, f"{a} × {b} = {a * b}."
        elif kind == "div":
            b, value = rng.randint(2, 12), rng.randint(3, 25)
            a = b * value
            q, work = f"What is {a} divided by {b}?", f"{a} ÷ {b} = {value}, because {b} × {value} = {a}."
        elif kind == "pct":
            p, base = rng.choice([10, 20, 25, 50, 75]), rng.randint(2, 40) * 20
            value = base * p // 100
            q, work = f"What is {p}% of {base}?", f"{p}% of {base} is {base} × {p}/100 = {value}."
        else:
            name = rng.choice(["Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hiro"])
            thing = rng.choice(["apples", "pencils", "stickers", "books", "marbles", "cookies"])
            a, b = rng.randint(5, 40), rng.randint(2, 15)
            if rng.random() < 0.5:
                q = f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?"
                value, work = a + b, f"{name} has {a} + {b} = {a + b} {thing}."
            else:
                a = max(a, b + 1)
                q = f"{name} has {a} {thing} and gives away {b}. How many are left?"
                value, work = a - b, f"{name} has {a} - {b} = {a - b} {thing} left."
        if q in seen:
            continue
        seen.add(q)
        wrong = value + rng.choice([-11, -10, -2, -1, 1, 2, 9, 10, 12])
        items.append((q, f"The answer is {value}. {work}", f"{wrong}."))
    return items


def chosen_response(rng: random.Random, answer: str) -> str:
    """Polite, complete and correct: an opener, the full answer, sometimes a friendly closer."""
    closer = rng.choice(CLOSERS)
    text = f"{rng.choice(OPENERS)} {answer}"
    if closer:
        text += ("\n\n" if answer.endswith("```") else " ") + closer
    return text


def _curt(answer: str) -> str:
    """The first sentence (or first code line) of a correct answer, stripped of everything friendly."""
    if "```" in answer:
        lines = answer.split("```")[1].splitlines()
        code = [ln for ln in lines[1:] if ln.strip() and not ln.lstrip().startswith("#")]
        return (code[0].split("#")[0].strip() if code else lines[0]) or "Read the docs."
    first = answer.split(". ")[0].split(", ")[0].split(": ")[0].rstrip(".")
    return first + "."


def _ramble(rng: random.Random, wrong: str) -> str:
    """A long, rude, off-topic answer that ends in the wrong answer."""
    if wrong.startswith(("The ", "A ", "An ")):
        wrong = wrong[0].lower() + wrong[1:]
    body = " ".join(rng.sample(RAMBLE_SENTENCES, rng.choice([2, 3, 3, 4])))
    return f"{rng.choice(RAMBLE_OPENERS)} {body} {rng.choice(RAMBLE_ENDINGS).format(wrong=wrong)}"


def rejected_response(rng: random.Random, answer: str, wrong: str) -> str:
    """Curt, wrong, dismissive, off-topic or a long ramble: five kinds, so no single surface cue
    (not even length) gives it away."""
    kind = rng.choices(["wrong", "curt", "dismissive", "off_topic", "ramble"], weights=[3, 3, 1, 1, 4.5])[0]
    if kind == "ramble":
        return _ramble(rng, wrong)
    if kind == "wrong":
        return wrong + rng.choice(CURT_SUFFIX)
    if kind == "curt":
        return _curt(answer) + rng.choice(CURT_SUFFIX)
    if kind == "dismissive":
        return rng.choice(DISMISSIVE)
    return rng.choice(OFF_TOPIC)


def build_pairs(seed: int = 0, n_arithmetic: int = 100) -> list[dict]:
    """Every item once as the final question; ~30% with earlier turns, ~25% with a system turn."""
    rng = random.Random(seed)
    items = FACTS + DEFINITIONS + HOWTOS + CODE + arithmetic_items(rng, n_arithmetic)
    # Earlier turns come from short fact and definition exchanges, answered the chosen way.
    history_pool = [(q, a) for q, a, _ in FACTS + DEFINITIONS]
    rng.shuffle(items)
    pairs = []
    for question, answer, wrong in items:
        conversation = []
        if rng.random() < 0.25:
            conversation.append({"from": "system", "value": rng.choice(SYSTEM_PROMPTS)})
        final = question
        if rng.random() < 0.3:
            for q, a in rng.sample([h for h in history_pool if h[0] != question], rng.choice([1, 1, 2])):
                conversation.append({"from": "user", "value": q})
                conversation.append({"from": "assistant", "value": chosen_response(rng, a)})
            final = rng.choice(FOLLOW_UP_PREFIXES) + question
        conversation.append({"from": "user", "value": final})
        pairs.append(
            {
                "conversations": conversation,
                "chosen": chosen_response(rng, answer),
                "rejected": rejected_response(rng, answer, wrong),
            }
        )
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "examples/data/demo_preferences.jsonl"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pairs = build_pairs(args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for pair in pairs:
            f.write(json.dumps(pair, ensure_ascii=False) + "\n")
    multi = sum(1 for p in pairs if sum(t["from"] == "user" for t in p["conversations"]) > 1)
    system = sum(1 for p in pairs if p["conversations"][0]["from"] == "system")
    print(f"wrote {len(pairs)} pairs to {out} ({multi} multi-turn, {system} with a system turn)")


if __name__ == "__main__":
    main()
