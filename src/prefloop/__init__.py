"""prefloop: the whole preference-alignment loop around DPO."""

__version__ = "0.1.0"


def train(config_or_path=None, **overrides):
    """Run DPO training like `prefloop train`; returns the final metrics dict."""
    from prefloop.train.run import train as _train

    return _train(config_or_path, **overrides)
