// Which part of a source's features an indexer reads. A source (a trace request, a live model)
// may hold the features of several model layers side by side (RequestContext::feature_layers,
// traces/FORMAT.md); an indexer reads the layers it was trained on (its checkpoint's
// feature_layers), in its own order. Training (indexer/training/trace_dataset.cpp) and the
// `lsa` policy select them the same way.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace kvlab {

/// For each layer the indexer reads, the position of that layer's part among the source's.
/// - `indexer` empty (trained on one unnamed layer, or before layers were recorded): the
///   source's first layer.
/// - `source` empty (one layer the source does not name): an indexer of one layer reads it;
///   one of several layers cannot.
/// - otherwise every indexer layer must be one of the source's.
/// Throws InputError "<where>: ..." naming the first layer the source lacks and the trace
/// datasets and flag that carry it.
std::vector<int> feature_layer_parts(std::span<const int> source, std::span<const int> indexer, const std::string& where);

/// "8,15,22", as a trace's feature_layers attribute and the --feature-layers flags write them.
std::string layer_list(std::span<const int> layers);

/// True when `parts` takes all `source_parts` parts in their order (nothing to gather).
bool takes_every_part(const std::vector<int>& parts, int64_t source_parts);

/// The chosen parts of one feature row of `source_parts` equal parts, side by side, into `out`
/// (parts.size() · part values).
void gather_feature_parts(std::span<const float> row, int64_t source_parts, const std::vector<int>& parts,
                          std::span<float> out);

}  // namespace kvlab
