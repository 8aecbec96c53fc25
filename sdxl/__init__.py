"""SDXL inference: models loaded once, requests run as plain diffusers pipeline calls."""
