"""An unquantised copy of a GGUF file: every quantised tensor de-quantised to bfloat16
(1-D tensors, the norms, in float32 as llama.cpp expects), metadata copied as is. Tensor layout
and names are llama.cpp's, so the copy computes the same model without quantisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_bf16_copy(source: Path, target: Path) -> Path:
    import gguf
    from gguf.quants import dequantize

    if target.exists():
        return target
    reader = gguf.GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(target, arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in ("general.architecture",
                                                            "general.file_type"):
            continue
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    for t in reader.tensors:
        values = dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = [int(x) for x in reversed(t.shape.tolist())]  # numpy order
        values = values.reshape(shape)
        if values.ndim == 1:
            writer.add_tensor(t.name, values)
        else:
            bits = (values.view(np.uint32) + 0x7FFF + ((values.view(np.uint32) >> 16) & 1)) >> 16
            writer.add_tensor(t.name, bits.astype(np.uint16), raw_shape=shape,
                              raw_dtype=gguf.GGMLQuantizationType.BF16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target
