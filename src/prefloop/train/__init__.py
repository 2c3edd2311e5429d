"""DPO training: losses, log-probs, batch layouts, reference cache, trainer.

`prefloop.train` is both this package and the Python API: importing a submodule
(`prefloop.train.losses`) binds the package to the name `train` on `prefloop`, replacing the
`train()` function defined there, so the package itself is made callable with the same signature.
"""

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, config_or_path=None, **overrides):
        """Run DPO training like `prefloop train`; returns the final metrics dict."""
        from prefloop.train.run import train

        return train(config_or_path, **overrides)


sys.modules[__name__].__class__ = _CallablePackage
