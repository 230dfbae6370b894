"""The encoder stage: our CLIP text transformer and every real weight layout it loads from (torch).

    from sdclip.encoder import load_text_encoders, LayerSelect
    loaded = load_text_encoders("path/to/sd_xl_base_1.0.safetensors")   # family "sdxl", encoders (L, G)
    out = loaded.encoders[1](ids, LayerSelect(1, final_norm=False), pooled=True)
"""

from sdclip.encoder.loading.checkpoint import CheckpointError, open_tensor_file
from sdclip.conventions.clip_skip import LayerSelect
from sdclip.encoder.config import LONGCLIP_L, PRESETS, VIT_BIGG, VIT_H, VIT_L, EncoderConfig
from sdclip.encoder.loading.clip import LoadedEncoders, encoders_from_modules
from sdclip.encoder.loading.load import load_text_encoders
from sdclip.encoder.model import CLIPTextEncoder, EncoderOutput

__all__ = [
    "CLIPTextEncoder", "CheckpointError", "EncoderConfig", "EncoderOutput", "LONGCLIP_L",
    "LayerSelect", "LoadedEncoders", "encoders_from_modules", "PRESETS", "VIT_BIGG", "VIT_H", "VIT_L", "load_text_encoders",
    "open_tensor_file",
]
