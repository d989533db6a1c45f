"""Copies of a GGUF file in other weight types, for llama.cpp: every quantised tensor
de-quantised, then written as bfloat16, float32 or Q8_0 (1-D tensors, the norms, stay float32
as llama.cpp expects), metadata copied as is. Tensor layout and names are llama.cpp's, so each
copy computes the same model; float32 exactly the weights erank_fast and vLLM load (the shipped
file de-quantised), Q8_0 them rounded to llama.cpp's 8-bit blocks (32 values, one scale)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

KINDS = ("bf16", "f32", "q8_0")


def _bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, rounded to nearest even."""
    bits = values.view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def write_copy(source: Path, target: Path, kind: str) -> Path:
    """``source`` with its 2-D tensors as ``kind`` (one of ``KINDS``) at ``target`` (kept if it
    exists: the copies are made once per work folder)."""
    import gguf
    from gguf.quants import dequantize, quantize

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if target.exists():
        return target
    file_type = {"bf16": gguf.LlamaFileType.MOSTLY_BF16, "f32": gguf.LlamaFileType.ALL_F32,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[kind]
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(target, reader.fields["general.architecture"].contents())
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in ("general.architecture",
                                                            "general.file_type"):
            continue
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub)
    writer.add_file_type(file_type)
    for t in reader.tensors:
        shape = [int(x) for x in reversed(t.shape.tolist())]  # numpy order
        values = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
        if values.ndim == 1 or kind == "f32":
            writer.add_tensor(t.name, values)
        elif kind == "bf16":
            writer.add_tensor(t.name, _bf16_bits(values), raw_shape=shape,
                              raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            q8 = gguf.GGMLQuantizationType.Q8_0  # bytes [rows, blocks × 34]: the shape follows
            writer.add_tensor(t.name, quantize(values, q8), raw_dtype=q8)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target
