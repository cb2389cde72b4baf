#include "server/attend_codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/status_macros.h"
#include "proto/wire/data_type.h"
#include "proto/wire/tensor_codec.h"

namespace attn::server {
namespace {

using attention::v1::Tensor;

absl::Status Invalid(auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); }

std::string ShapeString(const Tensor& t) { return wire::ShapeToString(wire::ShapeOf(t)); }

bool IsSet(const Tensor& t) {
  return t.shape_size() > 0 || !t.raw_data().empty() || t.float_data_size() > 0 ||
         t.dtype() != attention::v1::DATA_TYPE_UNSPECIFIED;
}

// What the wire codec checks of a request tensor: the element types the core
// computes in, every dimension positive, and an element count that fits the
// int32 a repeated field's size is.
constexpr attention::v1::DataType kRequestDataTypes[] = {attention::v1::FLOAT32,
                                                         attention::v1::BFLOAT16};
constexpr wire::TensorRule kRequestTensorRule{.dtypes = kRequestDataTypes,
                                              .allow_empty = false,
                                              .max_elements = std::numeric_limits<int32_t>::max()};

// Checks one input tensor, in this order: dtype, rank, dimensions (wire
// rule; then the last is `width`, named `width_name`, and the sequence at
// most `max_seq_len`), and the payload against the shape.
absl::Status CheckTensor(const char* field, const Tensor& t, int rank, int64_t width,
                         const char* width_name, int64_t max_seq_len) {
  ATTN_RETURN_IF_ERROR(
      wire::CheckDataType(t.dtype(), absl::StrCat(field, ".dtype"), kRequestTensorRule.dtypes));
  if (t.shape_size() != rank) {
    return Invalid(
        field, ".shape: expected ",
        rank == 3 ? absl::StrCat("[batch, seq, ", width, "]") : absl::StrCat("[seq, ", width, "]"),
        " (rank ", rank, "), got ", ShapeString(t));
  }
  ATTN_ASSIGN_OR_RETURN(const int64_t count,
                        wire::CheckShape(wire::ShapeOf(t), field, kRequestTensorRule));
  if (t.shape(rank - 1) != width) {
    return Invalid(field, ".shape[", rank - 1, "]: expected ", width, " (", width_name, "), got ",
                   t.shape(rank - 1));
  }
  if (t.shape(rank - 2) > max_seq_len) {
    return Invalid(field, ".shape[", rank - 2, "]: expected at most ", max_seq_len,
                   " (the model's max_seq_len), got ", t.shape(rank - 2));
  }
  return wire::CheckPayload(t, field, count);
}

// Decodes the valid rows of a checked [batch, seq, width] tensor straight
// into packed floats (one pass, no padded intermediate).
std::vector<float> DecodeRows(const Tensor& t, int64_t seq, int64_t width,
                              const std::vector<int64_t>& lengths) {
  int64_t rows = 0;
  for (int64_t len : lengths) rows += len;
  std::vector<float> out(static_cast<size_t>(rows * width));
  float* dst = out.data();
  for (size_t b = 0; b < lengths.size(); ++b) {
    const size_t n = static_cast<size_t>(lengths[b] * width);
    wire::DecodeElements(t, static_cast<size_t>(static_cast<int64_t>(b) * seq * width), n, dst);
    dst += n;
  }
  return out;
}

absl::StatusOr<std::vector<int64_t>> Lengths(const char* field,
                                             const google::protobuf::RepeatedField<int32_t>& in,
                                             int64_t batch, int64_t seq, const char* seq_name) {
  std::vector<int64_t> out;
  if (in.empty()) {
    out.assign(static_cast<size_t>(batch), seq);
    return out;
  }
  if (in.size() != batch) {
    return Invalid(field, ": expected ", batch, " entries (one per batch entry), got ", in.size());
  }
  for (int i = 0; i < in.size(); ++i) {
    if (in[i] < 0 || in[i] > seq) {
      return Invalid(field, "[", i, "]: expected 0..", seq, " (", seq_name, "), got ", in[i]);
    }
    out.push_back(in[i]);
  }
  return out;
}

// protobuf cannot serialize a message of 2 GiB or more (gRPC aborts on it),
// whatever the server's max message size.
constexpr int64_t kProtobufMaxBytes = std::numeric_limits<int32_t>::max();

std::string Bytes(int64_t n) {
  if (n >= (int64_t{1} << 30)) return absl::StrFormat("%.1f GiB", n / double(int64_t{1} << 30));
  if (n >= (int64_t{1} << 20)) return absl::StrFormat("%.1f MiB", n / double(int64_t{1} << 20));
  if (n >= (int64_t{1} << 10)) return absl::StrFormat("%.1f KiB", n / double(int64_t{1} << 10));
  return absl::StrCat(n, " bytes");
}

int64_t BoundWithProbs(const DecodedRequest& d, const Model& model, size_t request_id_bytes,
                       int64_t probs_values);

// Refuses a request whose response (d.response_bytes) could not be sent,
// before any compute, saying what would make it fit. `d` has its shape,
// lengths and flags.
absl::Status CheckResponseSize(const attention::v1::AttendRequest& request, const DecodedRequest& d,
                               const Model& model, int64_t max_bytes) {
  max_bytes = std::min(max_bytes, kProtobufMaxBytes);
  const int64_t bytes = d.response_bytes;
  if (bytes <= max_bytes) return absl::OkStatus();
  const int heads = model.config.num_heads;
  std::string why = absl::StrCat("the response would be ", Bytes(bytes), " (", bytes,
                                 " bytes), over the largest message the server sends, ",
                                 Bytes(max_bytes), " (", max_bytes, ")");
  std::vector<std::string> fixes = {"fewer or shorter sequences"};
  if (d.need_probs) {
    absl::StrAppend(&why, "; attention_probs alone is ", Bytes(ProbsValues(d, heads) * 4),
                    d.packed_probs ? " packed"
                                   : absl::StrCat(" padded [", d.batch, ", ", heads, ", ", d.seq_q,
                                                  ", ", d.seq_k, "]"));
    fixes.push_back("return_attention_probs false");
    if (!d.packed_probs) {
      const int64_t packed_bytes =
          BoundWithProbs(d, model, request.request_id().size(), ValidProbsValues(d, heads));
      if (packed_bytes <= max_bytes) {
        fixes.push_back(absl::StrCat("attention_probs_layout PROBS_LAYOUT_PACKED (",
                                     Bytes(packed_bytes), " for this request)"));
      }
    }
  }
  if (max_bytes < kProtobufMaxBytes) fixes.push_back("a server with a larger --max_message_bytes");
  return Invalid(d.need_probs ? "return_attention_probs" : "query", ": ", why, "; send ",
                 absl::StrJoin(fixes, ", or "));
}

// Refuses NaN and ±Inf in the valid rows of a packed input (padding rows
// were already dropped): they would spread through the softmax into whole
// rows of NaN output. One branch-free pass over the exponent bits, which the
// compiler vectorizes; the position is searched only when something was found.
absl::Status CheckFinite(const char* field, const std::vector<float>& packed, int64_t width,
                         const std::vector<int64_t>& offsets, bool rank2) {
  uint32_t bad = 0;
  for (const float x : packed) {
    uint32_t bits;
    std::memcpy(&bits, &x, sizeof(bits));
    bad |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
  }
  if (bad == 0) return absl::OkStatus();
  size_t i = 0;
  while (std::isfinite(packed[i])) ++i;
  const int64_t row = static_cast<int64_t>(i) / width;
  const int64_t seq = std::upper_bound(offsets.begin(), offsets.end(), row) - offsets.begin() - 1;
  const std::string where =
      rank2 ? absl::StrCat("[", row - offsets[seq], ", ", static_cast<int64_t>(i) % width, "]")
            : absl::StrCat("[", seq, ", ", row - offsets[seq], ", ",
                           static_cast<int64_t>(i) % width, "]");
  return Invalid(field, where, ": expected a finite value, got ", packed[i],
                 " (NaN and Inf inputs are refused)");
}

// The session fields: session_id, expected_length and layer, which only a
// session request may set. `d` has the query's batch.
absl::Status DecodeSessionFields(const attention::v1::AttendRequest& request, const Model& model,
                                 DecodedRequest* d) {
  if (request.session_id().empty()) {
    if (request.has_expected_length()) return Invalid("expected_length: only with session_id");
    if (request.layer() != 0) {
      return Invalid("layer: only with session_id (it names the session's cache layer), got ",
                     request.layer());
    }
    return absl::OkStatus();
  }
  if (!request.has_expected_length()) {
    return Invalid(
        "expected_length: required with session_id (the session's length this request "
        "extends: 0 after CreateSession)");
  }
  if (request.expected_length() < 0 || request.expected_length() > model.max_seq_len) {
    return Invalid("expected_length: expected 0..", model.max_seq_len,
                   " (the model's max_seq_len), got ", request.expected_length());
  }
  if (d->batch != 1) {
    return Invalid("query.shape[0]: expected 1 with session_id (one sequence per request), got ",
                   d->batch);
  }
  if (model.projections && request.layer() != 0) {
    return Invalid("layer: expected 0 (model '", model.name, "' has projections: one layer), got ",
                   request.layer());
  }
  if (request.layer() < 0 || request.layer() >= model.num_layers) {
    return Invalid("layer: expected 0..", model.num_layers - 1, " (model '", model.name,
                   "' has num_layers ", model.num_layers, "), got ", request.layer());
  }
  d->session_id = request.session_id();
  d->layer = request.layer();
  d->cached = request.expected_length();
  return absl::OkStatus();
}

}  // namespace

core::AttentionBatch DecodedRequest::batch_view() const {
  core::AttentionBatch b;
  b.query = query;
  b.cross_attention = cross;
  if (cross) {
    b.key = key;
    b.value = value;
    b.kv_offsets = kv_offsets;
  }
  b.q_offsets = q_offsets;
  b.causal = causal;
  b.need_probs = need_probs;
  return b;
}

absl::StatusOr<DecodedRequest> DecodeAttendRequest(const attention::v1::AttendRequest& request,
                                                   const Model& model,
                                                   const DecodeOptions& options) {
  const core::AttentionConfig& c = model.config;
  DecodedRequest d;
  if (!IsSet(request.query())) return Invalid("query: required, got nothing");
  const int rank = request.query().shape_size();
  if (rank != 2 && rank != 3) {
    return Invalid("query.shape: expected [batch, seq, ", c.embed_dim, "] or [seq, ", c.embed_dim,
                   "], got ", ShapeString(request.query()));
  }
  d.rank2 = rank == 2;
  ATTN_RETURN_IF_ERROR(
      CheckTensor("query", request.query(), rank, c.embed_dim, "embed_dim", model.max_seq_len));
  d.batch = d.rank2 ? 1 : request.query().shape(0);
  d.seq_q = request.query().shape(rank - 2);
  d.dtype = request.query().dtype();
  d.packed_floats = request.query().float_data_size() > 0;
  d.causal = request.causal();
  d.need_probs = request.return_attention_probs();
  if (!attention::v1::ProbsLayout_IsValid(request.attention_probs_layout())) {
    return Invalid(
        "attention_probs_layout: expected PROBS_LAYOUT_PADDED or PROBS_LAYOUT_PACKED, "
        "got ",
        wire::EnumName(attention::v1::ProbsLayout_descriptor(), request.attention_probs_layout()));
  }
  d.packed_probs = request.attention_probs_layout() == attention::v1::PROBS_LAYOUT_PACKED;

  ATTN_RETURN_IF_ERROR(DecodeSessionFields(request, model, &d));

  const bool offload = !model.projections;
  const bool has_key = IsSet(request.key());
  const bool has_value = IsSet(request.value());
  if (has_key != has_value) {
    return Invalid(has_key ? "value" : "key", ": required when ", has_key ? "key" : "value",
                   " is set (cross-attention needs both)");
  }
  if (offload && !has_key) {
    return Invalid("key: required for offload model '", model.name, "' (projected keys: [",
                   d.rank2 ? "" : "batch, ", "seq_k, ", c.key_dim(), "])");
  }
  const bool kv_differ = c.key_dim() != c.embed_dim || c.value_dim() != c.embed_dim;
  if (d.session() && !offload) {
    if (kv_differ) {
      return Invalid("session_id: model '", model.name, "' has kdim ", c.key_dim(), " and vdim ",
                     c.value_dim(), " (embed_dim ", c.embed_dim,
                     "): it only does cross-attention, which has no sessions");
    }
    if (has_key) {
      return Invalid("key: not allowed with session_id for model '", model.name,
                     "': a session of a model with projections attends over its own tokens");
    }
  }
  d.cross = has_key;
  if (!d.cross && kv_differ) {
    return Invalid("key: required: model '", model.name, "' has kdim ", c.key_dim(), " and vdim ",
                   c.value_dim(), " (embed_dim ", c.embed_dim,
                   "), so it only does cross-attention");
  }
  ATTN_ASSIGN_OR_RETURN(
      std::vector<int64_t> q_lengths,
      Lengths("query_lengths", request.query_lengths(), d.batch, d.seq_q, "query.shape seq"));
  std::vector<int64_t> k_lengths;
  if (d.cross) {
    const char* key_width = offload ? "num_kv_heads * head_dim" : "kdim";
    const char* value_width = offload ? "num_kv_heads * head_dim" : "vdim";
    ATTN_RETURN_IF_ERROR(
        CheckTensor("key", request.key(), rank, c.key_dim(), key_width, model.max_seq_len));
    ATTN_RETURN_IF_ERROR(
        CheckTensor("value", request.value(), rank, c.value_dim(), value_width, model.max_seq_len));
    for (int i = 0; i + 1 < rank; ++i) {
      if (request.key().shape(i) != request.value().shape(i)) {
        return Invalid("value.shape[", i, "]: expected ", request.key().shape(i),
                       " (as key.shape), got ", request.value().shape(i));
      }
    }
    if (!d.rank2 && request.key().shape(0) != d.batch) {
      return Invalid("key.shape[0]: expected ", d.batch, " (query batch), got ",
                     request.key().shape(0));
    }
    d.seq_k = request.key().shape(rank - 2);
    if (d.session()) {
      // Each new query token brings its own key and value.
      if (d.seq_k != d.seq_q) {
        return Invalid("key.shape[", rank - 2, "]: expected ", d.seq_q,
                       " (query.shape seq: with session_id each query token brings one key), got ",
                       d.seq_k);
      }
      if (!request.key_lengths().empty() &&
          !std::equal(request.key_lengths().begin(), request.key_lengths().end(), q_lengths.begin(),
                      q_lengths.end())) {
        return Invalid(
            "key_lengths: expected empty or equal to query_lengths with session_id (each new "
            "query token brings one key)");
      }
      k_lengths = q_lengths;
    } else {
      ATTN_ASSIGN_OR_RETURN(k_lengths, Lengths("key_lengths", request.key_lengths(), d.batch,
                                               d.seq_k, "key.shape seq"));
    }
  } else {
    d.seq_k = d.seq_q;
    if (!request.key_lengths().empty()) {
      ATTN_ASSIGN_OR_RETURN(k_lengths, Lengths("key_lengths", request.key_lengths(), d.batch,
                                               d.seq_k, "query.shape seq"));
      if (k_lengths != q_lengths) {
        return Invalid("key_lengths: expected empty or equal to query_lengths for self-attention");
      }
    }
  }
  if (d.session() && d.cached + d.seq_q > model.max_seq_len) {
    // No session holds more than max_seq_len tokens (CreateSession's
    // max_tokens is at most it): this request could never fit.
    return Invalid("query.shape[", rank - 2, "]: expected at most ", model.max_seq_len - d.cached,
                   " with expected_length ", d.cached, " (the model's max_seq_len is ",
                   model.max_seq_len, "), got ", d.seq_q);
  }
  // The padded key axis of the probabilities counts the cached tokens.
  d.seq_k += d.cached;
  int64_t tokens = 0;
  for (int64_t len : q_lengths) tokens += len;
  if (tokens > model.max_request_tokens) {
    return Invalid("query: expected at most ", model.max_request_tokens,
                   " tokens (the model's max_request_tokens), got ", tokens);
  }
  d.q_offsets = core::OffsetsFromLengths(q_lengths);
  if (d.cross) d.kv_offsets = core::OffsetsFromLengths(k_lengths);
  d.response_bytes = ResponseBytesBound(d, model, request.request_id().size());
  ATTN_RETURN_IF_ERROR(CheckResponseSize(request, d, model, options.max_response_bytes));
  if (d.cross) {
    d.key = DecodeRows(request.key(), d.seq_k, c.key_dim(), k_lengths);
    d.value = DecodeRows(request.value(), d.seq_k, c.value_dim(), k_lengths);
    ATTN_RETURN_IF_ERROR(CheckFinite("key", d.key, c.key_dim(), d.kv_offsets, d.rank2));
    ATTN_RETURN_IF_ERROR(CheckFinite("value", d.value, c.value_dim(), d.kv_offsets, d.rank2));
  }
  d.query = DecodeRows(request.query(), d.seq_q, c.embed_dim, q_lengths);
  ATTN_RETURN_IF_ERROR(CheckFinite("query", d.query, c.embed_dim, d.q_offsets, d.rank2));
  return d;
}

int64_t ValidProbsValues(const DecodedRequest& d, int heads) {
  int64_t values = 0;
  for (size_t b = 0; b + 1 < d.q_offsets.size(); ++b) {
    values += heads * (d.q_offsets[b + 1] - d.q_offsets[b]) * d.key_length(b);
  }
  return values;
}

int64_t ProbsValues(const DecodedRequest& d, int heads) {
  return d.packed_probs ? ValidProbsValues(d, heads) : d.batch * heads * d.seq_q * d.seq_k;
}

namespace {

// ResponseBytesBound with `probs_values` probabilities (0: none asked for).
int64_t BoundWithProbs(const DecodedRequest& d, const Model& model, size_t request_id_bytes,
                       int64_t probs_values) {
  // Each field's tag, length and the tensors' dtype and shape take a few
  // bytes; kFraming covers all of them (tensors, names, timing) many times.
  constexpr int64_t kFraming = 512;
  const int64_t out_esize = static_cast<int64_t>(wire::DataTypeSize(d.dtype));
  return kFraming + static_cast<int64_t>(request_id_bytes + model.name.size()) +
         d.batch * d.seq_q * model.config.embed_dim * out_esize + probs_values * 4;
}

}  // namespace

int64_t ResponseBytesBound(const DecodedRequest& d, const Model& model, size_t request_id_bytes) {
  return BoundWithProbs(d, model, request_id_bytes,
                        d.need_probs ? ProbsValues(d, model.config.num_heads) : 0);
}

void EncodeAttendResponse(const DecodedRequest& d, absl::Span<const float> output,
                          absl::Span<const float> probs, absl::Span<const int64_t> probs_offsets,
                          const Model& model, attention::v1::AttendResponse* response) {
  const int64_t e = model.config.embed_dim;
  const int heads = model.config.num_heads;
  Tensor* out = response->mutable_output();
  std::vector<int64_t> shape = {d.batch, d.seq_q, e};
  if (d.rank2) shape.erase(shape.begin());
  wire::InitTensor(shape, {.dtype = d.dtype, .packed = d.packed_floats}, out);
  // Each sequence's rows go straight to their place in the padded layout;
  // padding rows stay zero.
  for (int64_t b = 0; b < d.batch; ++b) {
    wire::EncodeElements(
        output.subspan(static_cast<size_t>(d.q_offsets[b] * e),
                       static_cast<size_t>((d.q_offsets[b + 1] - d.q_offsets[b]) * e)),
        static_cast<size_t>(b * d.seq_q * e), out);
  }
  if (d.need_probs) {
    Tensor* p = response->mutable_attention_probs();
    const int64_t values = ProbsValues(d, heads);
    if (d.packed_probs) {
      // The core's layout already: this request's blocks, one after another.
      wire::InitTensor({values}, {.dtype = attention::v1::FLOAT32}, p);
      if (values > 0) {
        wire::EncodeElements(
            probs.subspan(static_cast<size_t>(probs_offsets[0]), static_cast<size_t>(values)), 0,
            p);
      }
      return;
    }
    wire::InitTensor({d.batch, heads, d.seq_q, d.seq_k}, {.dtype = attention::v1::FLOAT32}, p);
    for (int64_t b = 0; b < d.batch; ++b) {
      const int64_t lq = d.q_offsets[b + 1] - d.q_offsets[b];
      const int64_t lk = d.key_length(static_cast<size_t>(b));
      if (lk == 0) continue;  // no keys, nothing to copy (probs may be empty: null)
      for (int h = 0; h < heads; ++h) {
        for (int64_t i = 0; i < lq; ++i) {
          wire::EncodeElements(
              probs.subspan(static_cast<size_t>(probs_offsets[b] + (h * lq + i) * lk),
                            static_cast<size_t>(lk)),
              static_cast<size_t>(((b * heads + h) * d.seq_q + i) * d.seq_k), p);
        }
      }
    }
  }
}

}  // namespace attn::server
