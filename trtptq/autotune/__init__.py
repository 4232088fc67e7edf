"""The search stage: range method choice, local errors, the gated model, sensitivity and fallback (runs models)."""
