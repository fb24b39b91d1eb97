from _refuse import kernel

selective_scan_fn = kernel("selective_scan_fn")
mamba_inner_fn = kernel("mamba_inner_fn")
selective_state_update = kernel("selective_state_update")
