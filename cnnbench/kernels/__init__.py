"""How a CPU computes the papers' layers fast: convolution plans (im2col, per-tap, grouped and
space-to-depth forms) and Winograd F(2x2,3x3) in `fastops` and `winograd`, and the process-wide
XLA/compile-cache switches in `flags`. The architecture files in `cnnbench.archs` never import
these directly; `archs.layers` chooses a formulation per layer, and only on a CPU backend."""
