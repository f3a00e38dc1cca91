"""Randomly initialised tiny stand-ins of DINOv2 and CLIP, saved in the Hugging Face layout (config.json beside
model.safetensors) as a downloaded model is: the evaluators read them exactly as they read the real weights."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import transformers

TINY = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
        "patch_size": 14, "image_size": 28}


def save_tiny_dinov2(folder: Path) -> str:
    """A 1-layer DINOv2 (seeded random weights) saved in the Hugging Face layout; returns its weights' sha256."""
    torch.manual_seed(0)
    transformers.Dinov2Model(transformers.Dinov2Config(**TINY)).save_pretrained(folder)
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def save_tiny_clip(folder: Path) -> str:
    """A whole 1-layer CLIP (text and vision towers, seeded random weights) saved as the Hub's CLIP checkpoints are:
    the CMMD evaluator reads its vision tower and projection out of it. Returns its weights' sha256."""
    torch.manual_seed(0)
    layers = {key: value for key, value in TINY.items() if key not in ("patch_size", "image_size")}
    text = {**layers, "vocab_size": 100, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    vision = {**TINY, "projection_dim": 8}
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)
    transformers.CLIPModel(config).save_pretrained(folder)
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
