"""The encoder stage: our CLIP text transformer and every real weight layout it loads from (torch).

    from sdclip.encoder import load_text_encoders, LayerSelect
    loaded = load_text_encoders("path/to/sd_xl_base_1.0.safetensors")   # family "sdxl", encoders (L, G)
    out = loaded.encoders[1](ids, LayerSelect(1, final_norm=False), pooled=True)
"""

from sdclip.encoder.loading.checkpoint import CheckpointError, open_tensor_file
from sdclip.conventions.clip_skip import LayerSelect
from sdclip.encoder.config import (
    ENCODER_CONFIGS, LONGCLIP_L_CONFIG, VIT_BIGG_CONFIG, VIT_H_CONFIG, VIT_L_CONFIG, EncoderConfig,
)
from sdclip.encoder.loading.clip import LoadedEncoders, encoders_from_modules
from sdclip.encoder.loading.load import load_text_encoders
from sdclip.encoder.model import CLIPTextEncoder, EncoderOutput

__all__ = [
    "CLIPTextEncoder", "CheckpointError", "ENCODER_CONFIGS", "EncoderConfig", "EncoderOutput", "LONGCLIP_L_CONFIG",
    "LayerSelect", "LoadedEncoders", "encoders_from_modules", "VIT_BIGG_CONFIG", "VIT_H_CONFIG", "VIT_L_CONFIG",
    "load_text_encoders",
    "open_tensor_file",
]
