"""DPO training: losses, log-probs, batch layouts, reference cache, trainer."""
