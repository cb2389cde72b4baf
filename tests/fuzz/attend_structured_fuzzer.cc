// Near-valid AttendRequests built with FuzzedDataProvider: shapes, lengths,
// dtypes (FLOAT32, BFLOAT16, other enum values), raw_data a few bytes off,
// float_data vs raw_data, causal, probabilities, key/value present or not.
// Each deliberate defect is rare and recorded, so the fuzzer knows whether
// the request is valid: DecodeAttendRequest must accept exactly the valid
// ones, and those run through the core and are compared with the reference
// (tests/fuzz/attend_fuzz_models.h).
#include <fuzzer/FuzzedDataProvider.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attention/v1/attention.pb.h"
#include "core/dtype.h"
#include "tests/fuzz/attend_fuzz_models.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using attention::v1::Tensor;

class RequestBuilder {
 public:
  explicit RequestBuilder(FuzzedDataProvider& p) : p_(p) {}

  // True (the request made invalid) about one time in 16, and only while
  // the request is still valid: one defect per request, so no two can
  // cancel out (a batch twice as large with half the sequence length). An
  // exhausted provider yields 0: no defect.
  bool Defect() {
    if (!valid_ || p_.ConsumeIntegralInRange<int>(0, 15) != 15) return false;
    valid_ = false;
    return true;
  }
  // `want`, or on a defect a few off (never `want` itself).
  int64_t MaybeOff(int64_t want, int64_t spread) {
    if (!Defect()) return want;
    int64_t delta = p_.ConsumeIntegralInRange<int64_t>(-spread, spread - 1);
    if (delta >= 0) ++delta;
    return want + delta;
  }
  void Invalidate() { valid_ = false; }
  bool valid() const { return valid_; }

  // Fills `t` as [batch, seq, width] (or [seq, width]) with values in
  // [-4, 4]; `lengths` are the valid rows per sequence, for placing a
  // non-finite value in a valid row (a defect) or a padding row (allowed).
  void FillTensor(Tensor* t, int rank, int64_t batch, int64_t seq, int64_t width,
                  const std::vector<int64_t>& lengths) {
    // dtype: mostly FLOAT32 or BFLOAT16, rarely something else.
    int dtype = p_.ConsumeBool() ? attention::v1::FLOAT32 : attention::v1::BFLOAT16;
    if (Defect()) {
      dtype = p_.PickValueInArray({0, 3, 4, -1, 1000});  // unspecified, FLOAT16, unknown
    }
    t->set_dtype(static_cast<attention::v1::DataType>(dtype));
    // A wrong rank is 1 or 4: a [1, seq, width] query is a valid rank 2 one.
    const int64_t shape_rank = Defect() ? p_.PickValueInArray({1, 4}) : rank;
    for (int64_t i = 0; i < shape_rank; ++i) {
      int64_t want = i == shape_rank - 1 ? width : (i == shape_rank - 2 ? seq : batch);
      t->add_shape(MaybeOff(want, 2));
    }
    const int64_t rows = batch * seq;
    std::vector<float> values(static_cast<size_t>(rows * width));
    for (float& v : values) v = static_cast<float>(p_.ConsumeIntegral<int8_t>()) / 32.0f;
    if (p_.ConsumeIntegralInRange<int>(0, 15) == 15 && !values.empty()) {
      const size_t at = p_.ConsumeIntegralInRange<size_t>(0, values.size() - 1);
      values[at] = p_.PickValueInArray({std::numeric_limits<float>::quiet_NaN(),
                                        std::numeric_limits<float>::infinity(),
                                        -std::numeric_limits<float>::infinity()});
      const int64_t row = static_cast<int64_t>(at) / width;
      if (row % seq < lengths[row / seq]) Invalidate();  // a valid row: refused
    }
    // Encoding: float_data (FLOAT32 only), raw_data, both or neither.
    const bool floats = dtype == attention::v1::FLOAT32 && p_.ConsumeBool();
    bool use_floats = floats, use_raw = !floats;
    if (Defect()) use_floats = use_raw = p_.ConsumeBool();  // both or neither
    if (use_floats) {
      const int64_t n = MaybeOff(static_cast<int64_t>(values.size()), 2);
      for (int64_t i = 0; i < n; ++i) {
        t->add_float_data(i < static_cast<int64_t>(values.size()) ? values[i] : 0.5f);
      }
    }
    if (use_raw) {
      const attn::core::DType dt =
          dtype == attention::v1::BFLOAT16 ? attn::core::DType::kBF16 : attn::core::DType::kF32;
      std::string raw(values.size() * attn::core::DTypeSize(dt), '\0');
      attn::core::EncodeFromFloat(dt, values, reinterpret_cast<uint8_t*>(raw.data()));
      raw.resize(static_cast<size_t>(std::max<int64_t>(0, MaybeOff(raw.size(), 3))), '\x3f');
      t->set_raw_data(std::move(raw));
    }
  }

  // Lengths (each 0..seq) written to `field`, or left empty (all full).
  std::vector<int64_t> FillLengths(google::protobuf::RepeatedField<int32_t>* field, int64_t batch,
                                   int64_t seq) {
    std::vector<int64_t> lengths(static_cast<size_t>(batch), seq);
    if (p_.ConsumeBool()) return lengths;
    for (int64_t& l : lengths) l = p_.ConsumeIntegralInRange<int64_t>(0, seq);
    // One entry too many (one too few could be none: a valid request).
    const int64_t count = Defect() ? batch + 1 : batch;
    for (int64_t i = 0; i < count; ++i) {
      const int64_t l = i < batch ? lengths[i] : 0;
      field->Add(static_cast<int32_t>(Defect() ? p_.PickValueInArray<int64_t>({-1, seq + 1}) : l));
    }
    return lengths;
  }

 private:
  FuzzedDataProvider& p_;
  bool valid_ = true;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider p(data, size);
  const auto& models = attn::fuzz::FuzzModels();
  const attn::fuzz::FuzzModel& m = models[p.ConsumeIntegralInRange<size_t>(0, models.size() - 1)];
  const attn::core::AttentionConfig& c = m.model.config;
  const int64_t max_seq = m.model.max_seq_len;
  RequestBuilder b(p);

  attention::v1::AttendRequest request;
  request.set_causal(p.ConsumeBool());
  request.set_return_attention_probs(p.ConsumeBool());
  // Padded or packed; on a defect a value ProbsLayout does not define.
  request.set_attention_probs_layout(static_cast<attention::v1::ProbsLayout>(
      b.Defect() ? p.PickValueInArray({2, -1, 1000}) : p.ConsumeIntegralInRange<int>(0, 1)));
  const int rank = p.ConsumeBool() ? 3 : 2;
  const int64_t batch = rank == 2 ? 1 : p.ConsumeIntegralInRange<int64_t>(1, 3);
  const int64_t seq_q = p.ConsumeIntegralInRange<int64_t>(1, max_seq);
  const bool kv_differ = c.key_dim() != c.embed_dim || c.value_dim() != c.embed_dim;
  const bool cross = kv_differ ? !b.Defect() : p.ConsumeBool();
  const int64_t seq_k = cross ? p.ConsumeIntegralInRange<int64_t>(1, max_seq) : seq_q;

  const std::vector<int64_t> q_lengths =
      b.FillLengths(request.mutable_query_lengths(), batch, seq_q);
  int64_t tokens = 0;
  for (int64_t l : q_lengths) tokens += l;
  if (tokens > m.model.max_request_tokens) b.Invalidate();
  b.FillTensor(request.mutable_query(), rank, batch, seq_q, c.embed_dim, q_lengths);

  if (cross) {
    const std::vector<int64_t> k_lengths =
        b.FillLengths(request.mutable_key_lengths(), batch, seq_k);
    // Key and value share batch and seq; a defect gives one of them another.
    // (A size 0 still fills a tensor, shape [0, ...]: never mistaken for
    // self-attention.)
    const int64_t key_batch = rank == 3 ? b.MaybeOff(batch, 1) : batch;
    const int64_t value_seq = b.MaybeOff(seq_k, 1);
    const std::vector<int64_t> kl(static_cast<size_t>(key_batch), 0);  // placeholder lengths
    const bool drop_value = b.Defect(), drop_key = b.Defect();
    if (!drop_key) {
      b.FillTensor(request.mutable_key(), rank, key_batch, seq_k, c.key_dim(),
                   key_batch == batch ? k_lengths : kl);
    }
    if (!drop_value) {
      b.FillTensor(request.mutable_value(), rank, key_batch, value_seq, c.value_dim(),
                   key_batch == batch && value_seq == seq_k ? k_lengths : kl);
    }
  } else if (p.ConsumeBool()) {
    // Self-attention may repeat query_lengths as key_lengths.
    for (size_t i = 0; i < q_lengths.size(); ++i) {
      request.add_key_lengths(static_cast<int32_t>(b.MaybeOff(q_lengths[i], 1)));
    }
  }

  const absl::Status status = attn::fuzz::CheckAttend(request, m);
  FUZZ_CHECK(status.ok() || !b.valid(),
             absl::StrCat("model ", m.model.name, " refused a valid request: ", status.ToString(),
                          "\n", request.ShortDebugString().substr(0, 2000)));
  FUZZ_CHECK(!status.ok() || b.valid(),
             absl::StrCat("model ", m.model.name, " accepted an invalid request\n",
                          request.ShortDebugString().substr(0, 2000)));
  return 0;
}
