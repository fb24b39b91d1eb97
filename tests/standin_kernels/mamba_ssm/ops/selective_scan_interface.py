from mamba_ssm import mamba_inner_fn, selective_scan_fn  # noqa: F401
