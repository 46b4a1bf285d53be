"""Usage attribution: what each owner's and team's personal copies hold, in
core-seconds, GiB-seconds, pod-seconds and storage, integrated over each
object's own lifetime, kept durably in the cluster, and reported on
``/v1/usage`` and ``/metrics``. See docs/usage.md."""
