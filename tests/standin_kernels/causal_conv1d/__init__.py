from _refuse import kernel

causal_conv1d_fn = kernel("causal_conv1d_fn")
causal_conv1d_update = kernel("causal_conv1d_update")
