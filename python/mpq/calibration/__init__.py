"""Step 1, calibrate: one high-precision forward and backward pass over the calibration batches gives the
per-sample first-order loss change δ[n, l, c] of every (layer, candidate) (``hooks``), through the fused C++
kernel or its plain-torch reference (``kernel``); below the layer, the weight term per output-row group from the
same sums (``granularity``); multipoint candidates through the kernel on the weight's residual (``points``)."""
from .hooks import calibrate, causal_lm_loss, fingerprint, model_coverage, quantizable_layers

__all__ = ["calibrate", "causal_lm_loss", "fingerprint", "model_coverage", "quantizable_layers"]
