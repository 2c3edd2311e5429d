"""Each quality check fires on bad data and stays quiet on clean data."""

import pytest

from prefloop.data.quality import (
    check_contradictions,
    check_duplicate_ids,
    check_duplicates,
    check_empty,
    check_formatting_only,
    check_identical,
    check_length_bias,
    check_off_topic,
    content_words,
    formatting_key,
    normalize_text,
    run_quality_checks,
)
from prefloop.data.schema import Message, PreferencePair

TOPICS = [
    ("What is the capital of France?", "The capital of France is Paris.", "The capital of France is Lyon, I think."),
    ("How many legs does a spider have?", "A spider has eight legs.", "Spiders have six legs, like ants."),
    ("Why is the sky blue during the day?", "The sky looks blue because air scatters blue sunlight more.", "The sky is blue because it reflects the ocean."),
    ("Which planet is the largest in the Solar System?", "Jupiter is the largest planet.", "Mars is the largest planet in the Solar System by far."),
    ("What does a thermometer measure exactly?", "A thermometer measures temperature.", "A thermometer measures wind speed and direction outside."),
    ("Who wrote the play Romeo and Juliet?", "Shakespeare wrote Romeo and Juliet.", "Romeo and Juliet was written by Charles Dickens in London."),
    ("How do I boil an egg for a runny yolk?", "Boil the egg for six minutes for a runny yolk.", "Boil the egg for twenty minutes."),
    ("What gas do plants absorb from the air?", "Plants absorb carbon dioxide from the air for photosynthesis.", "Plants absorb helium gas from the air."),
    ("What is the chemical symbol for gold?", "Gold has the chemical symbol Au.", "The chemical symbol for gold is Go, from the English word."),
    ("How many continents are there on Earth?", "There are seven continents on Earth by the usual count.", "Earth has three continents."),
    ("What is the freezing point of water in Celsius?", "Water freezes at zero degrees Celsius.", "Water freezes at 50 degrees Celsius, the freezing point of water."),
    ("Which animal is known as the king of the jungle?", "The lion is known as the king of the jungle.", "The jungle king is the mouse, an animal famous for its roar and strength."),
]


def pair(prompt, chosen, rejected, id=None):
    return PreferencePair([Message("user", prompt)], chosen, rejected, id=id)


@pytest.fixture
def clean():
    return [pair(p, c, r, id=f"c{i}") for i, (p, c, r) in enumerate(TOPICS)]


def test_clean_data_passes_every_check(clean):
    report = run_quality_checks(clean)
    assert [f.check for f in report.findings if f.fired] == []
    assert report.removed == {}
    assert report.clean(clean) == clean
    assert report.to_dict()["passing"] == len(clean)


def test_normalize_text():
    assert normalize_text("  Hello,   WORLD!\n") == "hello world"
    assert normalize_text("It\u2019s \u201cfine\u201d \u2014 ok") == "its fine ok"
    assert formatting_key("Hello,world") == formatting_key("hello  World!")


def test_identical_fires_and_stays_quiet(clean):
    bad = clean + [pair("Q?", "Same answer.", "Same answer.", id="dup")]
    finding, flagged = check_identical(bad)
    assert finding.fired and flagged == [len(clean)] and finding.examples[0]["id"] == "dup"
    assert not check_identical(clean)[0].fired


def test_formatting_only_fires_and_stays_quiet(clean):
    bad = clean + [pair("Q?", "Paris is the capital.", "paris   is the capital")]
    finding, flagged = check_formatting_only(bad)
    assert finding.fired and flagged == [len(clean)]
    assert not check_formatting_only(clean)[0].fired
    # identical pairs are the identical check's, not counted twice
    assert not check_formatting_only([pair("Q", "x", "x")])[0].fired


def test_empty_fires_and_stays_quiet(clean):
    bad = clean + [pair("Q?", "   \n", "An answer."), pair("Q?", "An answer.", ""), pair("  ", "a", "b")]
    finding, flagged = check_empty(bad)
    assert finding.count == 3 and flagged == [12, 13, 14]
    assert [e["detail"] for e in finding.examples] == ["chosen empty", "rejected empty", "last prompt turn empty"]
    assert not check_empty(clean)[0].fired


def test_duplicates_fire_keep_first_and_stay_quiet(clean):
    bad = clean + [pair(*TOPICS[0], id="again")]
    finding, flagged = check_duplicates(bad)
    assert finding.count == 1 and flagged == [len(clean)]
    assert finding.examples[0]["detail"] == "same as c0"
    assert not check_duplicates(clean)[0].fired
    # a different system prompt makes it a different pair
    other = PreferencePair([Message("system", "S"), Message("user", TOPICS[0][0])], TOPICS[0][1], TOPICS[0][2])
    assert not check_duplicates(clean + [other])[0].fired


def test_contradictions_fire_on_both_pairs_and_stay_quiet(clean):
    p, c, r = TOPICS[1]
    bad = clean + [pair(p, r, c, id="flipped")]
    finding, flagged = check_contradictions(bad)
    assert finding.count == 2 and flagged == [1, len(clean)]
    example = finding.examples[0]
    assert {example["id"], example["detail"].split()[-1]} == {"c1", "flipped"}
    assert not check_contradictions(clean)[0].fired
    # same prompt, different answer pairs: not a contradiction
    assert not check_contradictions(clean + [pair(p, "Eight.", "Ten.")])[0].fired


def test_duplicate_ids_fire_and_stay_quiet(clean):
    finding = check_duplicate_ids(clean + [pair("Q", "a", "b", id="c3")])
    assert finding.fired and finding.examples[0]["id"] == "c3"
    assert not check_duplicate_ids(clean).fired


def test_length_bias_fires_and_stays_quiet(clean):
    verbose = [pair(p, c + " " + c + " Let me know if you want more detail on this.", r) for p, c, r in TOPICS]
    finding = check_length_bias(verbose)
    assert finding.fired
    assert finding.stats["share_chosen_longer"] == 1.0
    assert finding.stats["mean_length_ratio"] > 1.5
    assert "verbosity" in finding.advice
    quiet = check_length_bias(clean)
    assert not quiet.fired
    assert 0.3 <= quiet.stats["share_chosen_longer"] <= 0.7


def test_length_bias_needs_enough_pairs(clean):
    few = [pair(p, c * 3, r) for p, c, r in TOPICS[:5]]
    finding = check_length_bias(few)
    assert not finding.fired and "too few to judge" in finding.advice


def test_off_topic_fires_lists_least_related_and_stays_quiet(clean):
    bad = clean + [pair("How do I reverse a Python list in place?", "Call list.reverse() on the Python list; it works in place.",
                        "Bananas grow on large tropical plants near beaches.", id="bananas")]
    finding = check_off_topic(bad)
    assert finding.count == 1
    assert finding.examples[0]["id"] == "bananas"
    assert finding.examples[0]["detail"].startswith("rejected overlap 0.00")
    quiet = check_off_topic(clean)
    assert not quiet.fired
    assert len(quiet.examples) == 5  # the least related pairs are listed even when none is flagged


def test_content_words_drop_stopwords_and_keep_numbers():
    assert content_words("What is the capital of France? 12 times 17") == {"capit", "franc", "12", "times", "17"}


def test_removed_pairs_are_attributed_to_the_first_check(clean):
    bad = clean + [pair("Q?", "", ""), pair(*TOPICS[2])]
    report = run_quality_checks(bad)
    assert report.removed == {12: "identical", 13: "duplicate"}
    assert report.removed_by_check() == {"identical": 1, "duplicate": 1}
    assert report.finding("empty").count == 1  # also reported by the empty check
    assert len(report.clean(bad)) == len(clean)


def test_empty_and_identical_answers_are_the_encoders_definition():
    """With a ChatML tokenizer's stop strings, an answer of just "<|im_end|>" is empty, "A" and "A<|im_end|>" are
    the same answer (the encoder trains them alike); an answer that only calls a tool is not empty, and answers differing in their fields
    (reasoning, tool calls) or role are not identical."""
    call = [{"type": "function", "function": {"name": "w", "arguments": "{}"}}]
    pairs = [
        pair("What is the capital of France?", "<|im_end|>", "Paris."),
        pair("What is the capital of Spain?", "Madrid.", "Madrid.<|im_end|>\n"),
        PreferencePair([Message("user", "Weather?")], "", "Sunny.", chosen_fields={"tool_calls": call}),
        PreferencePair([Message("user", "2+2?")], "4", "4", chosen_fields={"reasoning_content": "2+2=4"}),
        PreferencePair([Message("user", "Weather?")], "{}", "{}", chosen_role="function_call"),
        pair("What is the capital of Italy?", "Rome.", "Rome."),
    ]
    stops = ("<|im_end|>", "<|endoftext|>")  # a ChatML tokenizer's stop strings
    empty, flagged_empty = check_empty(pairs, stops)
    assert flagged_empty == [0] and empty.examples[0]["detail"] == "chosen empty"
    _, flagged_identical = check_identical(pairs, stops)
    assert flagged_identical == [1, 5]
    _, formatting = check_formatting_only(pairs, stops)
    assert formatting == []
    assert run_quality_checks(pairs, stops=stops).removed == {0: "empty", 1: "identical", 5: "identical"}


def test_without_a_tokenizer_no_end_token_text_is_stripped():
    """With no tokenizer, "</s>" is text (a ChatML model trains "Use <s>old</s>" and "Use <s>old" as different
    answers): not identical, not empty, not removed by --write-clean."""
    pairs = [pair("How do I strike text in HTML?", "Use <s>old</s>", "Use <s>old"),
             pair("Close the tag.", "</s>", "Done."),
             pair("Same?", "A<|im_end|>", "A")]
    assert check_identical(pairs)[1] == [] and check_empty(pairs)[1] == []
    assert run_quality_checks(pairs).removed == {}
    # with a tokenizer whose stop strings hold "</s>" (Llama-2, Mistral) they are the same answer
    assert check_identical(pairs, ("</s>",))[1] == [0] and check_empty(pairs, ("</s>",))[1] == [1]
