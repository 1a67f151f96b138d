"""Flower apps of ours, run by the client through the same runner as a user's app
(fl_service/flower_app.py).

- `fl_service.apps.builtin:app`: the built-in digits / fashion_mnist / cifar10 tasks, or a
  user's old-style task module (config key `task`), as a Flower ClientApp.

What an app may leave in `context.state` for the client service (it never goes on the wire, and
Flower's own runtime simply keeps it in the node's state):
- `STATE_HISTOGRAM` (MetricRecord {label: count}): the class histogram of the node's training
  data; the client reports it in its updates and /status, which the orchestrator's min_kld
  policy reads. Apps that do not set it report none.
- `STATE_TIMING` (MetricRecord {"train_time_s": seconds}): the pure training time of the call
  just made; without it the client reports the whole app call as training time.
"""

STATE_HISTOGRAM = "fl_service.histogram"
STATE_TIMING = "fl_service.timing"
