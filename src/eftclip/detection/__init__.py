"""Oracle-guided trigger detection (Algorithm 1) and affected-label identification (Algorithm 2).

- :mod:`eftclip.detection.algorithms` -- the two algorithms as pure functions, plus the robust mode.
- :mod:`eftclip.detection.vocab` -- the label vocabulary (a file, or nouns mined from captions).
- :mod:`eftclip.detection.runner` -- the streaming, resumable run over a dataset (:func:`run_detection`), in steps:
  ``config`` (DetectConfig), ``sources`` (images, vocabulary), ``scoring`` (the CLIP pass), ``records``
  (logs, shards, merge), ``decide`` (pass 2, pure), ``outputs`` (files, figures, warnings).
- :mod:`eftclip.detection.metrics` -- detection rate, precision, false positives.
- :mod:`eftclip.detection.figures` -- the Figure 7 style panel.
- :mod:`eftclip.detection.sweep` -- detection rate against rho, mu, theta, tau (Figures 3 and 4).
"""

from eftclip.detection.algorithms import affected_labels, find_adversarial_trigger

__all__ = ["affected_labels", "find_adversarial_trigger", "run_detection", "DetectConfig"]


def __getattr__(name):
    # the runner pulls in torch and open_clip; import it only when asked for
    if name in ("run_detection", "DetectConfig"):
        from eftclip.detection import runner

        return getattr(runner, name)
    raise AttributeError(name)
