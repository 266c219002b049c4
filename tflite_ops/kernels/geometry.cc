#include "tflite_ops/kernels/geometry.h"

namespace hybrid_sparse {
namespace geometry {

std::string GeometryJson() {
  std::string out = "{\"f32\": {";
  bool first = true;
  for (const F32& k : {kAvx2, kAvx2Unstructured, kAvx2Wide, kAvx2Narrow, kAvx512, kAvx512Narrow,
                       kNeon}) {
    out += std::string(first ? "" : ", ") + "\"" + k.name + "\": {\"lanes\": " +
           std::to_string(k.lanes) + ", \"tile\": " + std::to_string(k.tile) +
           ", \"pass\": " + std::to_string(k.pass) + ", \"max_rows\": " +
           std::to_string(k.max_rows) + "}";
    first = false;
  }
  out += "}, \"qs8\": {";
  first = true;
  for (const Qs8& k : {kQs8Avx512Vnni, kQs8Avx2, kQs8Neon, kQs8NeonDot, kQs8RiscvP}) {
    out += std::string(first ? "" : ", ") + "\"" + k.name + "\": {\"lanes\": " +
           std::to_string(k.lanes) + ", \"tiles\": [";
    for (int t = 0; t < kMaxQs8Tiles && k.tiles[t] != 0; ++t)
      out += (t ? ", " : "") + std::to_string(k.tiles[t]);
    out += "], \"block_tiles\": [";
    for (int t = 0; t < kMaxQs8Tiles && k.block_tiles[t] != 0; ++t)
      out += (t ? ", " : "") + std::to_string(k.block_tiles[t]);
    out += "]}";
    first = false;
  }
  const Qs8Tiles& t = kQs8Amx;
  out += std::string("}, \"qs8_tiles\": {\"") + t.name + "\": {\"positions\": " +
         std::to_string(t.positions) + ", \"channels\": " + std::to_string(t.channels) +
         ", \"chunk_bytes\": " + std::to_string(t.chunk_bytes) + "}}";
  out += ", \"qs8_block_rows\": " + std::to_string(kQs8BlockRows) +
         ", \"rvv\": {\"lmul\": " + std::to_string(kRvvLmul) +
         ", \"max_rows\": " + std::to_string(kRvvMaxRows) + "}}";
  return out;
}

}  // namespace geometry
}  // namespace hybrid_sparse
