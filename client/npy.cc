#include "client/npy.h"

#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/dtype.h"

namespace attn::client {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the .npy reader copies little-endian bytes as they are");

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicSize = 6;
constexpr size_t kAlign = 64;
// Guards the element count product against overflow and absurd shapes.
constexpr int64_t kMaxElements = int64_t{1} << 40;
constexpr absl::string_view kSupported = "'<f4' (float32), '<f2' (float16), '<i4' (int32)";

std::string ShapeString(absl::Span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// One value of the header dict. The header is a Python literal that numpy
// writes itself, so a tiny parser for strings, booleans, integer tuples and
// (to reject them clearly) lists is enough.
struct HeaderValue {
  enum class Kind { kString, kBool, kTuple, kList } kind = Kind::kString;
  std::string str;
  bool boolean = false;
  std::vector<int64_t> ints;
};

class HeaderParser {
 public:
  HeaderParser(absl::string_view text, absl::string_view label) : text_(text), label_(label) {}

  // Fills descr / fortran_order / shape; every key must appear exactly once.
  absl::Status Parse(HeaderValue& descr, bool& fortran_order, std::vector<int64_t>& shape) {
    SkipSpace();
    if (!Consume('{')) return Error("expected '{'");
    bool have_descr = false, have_order = false, have_shape = false;
    while (true) {
      SkipSpace();
      if (Consume('}')) break;
      std::string key;
      if (absl::Status s = ParseString(key); !s.ok()) return s;
      SkipSpace();
      if (!Consume(':')) return Error(absl::StrCat("expected ':' after key '", key, "'"));
      SkipSpace();
      if (key != "descr" && key != "fortran_order" && key != "shape") {
        return Error(absl::StrCat("unexpected key '", key,
                                  "' (expected 'descr', 'fortran_order', 'shape')"));
      }
      HeaderValue value;
      if (absl::Status s = ParseValue(value); !s.ok()) return s;
      if (key == "descr") {
        if (have_descr) return Error("duplicate key 'descr'");
        have_descr = true;
        descr = std::move(value);
      } else if (key == "fortran_order") {
        if (have_order) return Error("duplicate key 'fortran_order'");
        if (value.kind != HeaderValue::Kind::kBool) {
          return Error("'fortran_order' must be True or False");
        }
        have_order = true;
        fortran_order = value.boolean;
      } else {
        if (have_shape) return Error("duplicate key 'shape'");
        if (value.kind != HeaderValue::Kind::kTuple) {
          return Error("'shape' must be a tuple of integers");
        }
        have_shape = true;
        shape = std::move(value.ints);
      }
      SkipSpace();
      if (Consume(',')) continue;
      if (Consume('}')) break;
      return Error("expected ',' or '}' in the header dict");
    }
    SkipSpace();
    if (pos_ != text_.size()) return Error("unexpected text after the header dict");
    if (!have_descr) return Error("missing key 'descr'");
    if (!have_order) return Error("missing key 'fortran_order'");
    if (!have_shape) return Error("missing key 'shape'");
    return absl::OkStatus();
  }

 private:
  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(label_, ": malformed .npy header: ", what, " at offset ", pos_));
  }
  void SkipSpace() {
    while (pos_ < text_.size() && absl::ascii_isspace(static_cast<unsigned char>(text_[pos_]))) {
      ++pos_;
    }
  }
  bool Consume(char c) {
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool ConsumeWord(absl::string_view word) {
    if (text_.substr(pos_, word.size()) == word) {
      pos_ += word.size();
      return true;
    }
    return false;
  }

  absl::Status ParseString(std::string& out) {
    if (pos_ >= text_.size() || (text_[pos_] != '\'' && text_[pos_] != '"')) {
      return Error("expected a quoted string");
    }
    const char quote = text_[pos_++];
    const size_t end = text_.find(quote, pos_);
    if (end == absl::string_view::npos) return Error("unterminated string");
    out = std::string(text_.substr(pos_, end - pos_));
    pos_ = end + 1;
    return absl::OkStatus();
  }

  absl::Status ParseValue(HeaderValue& out) {
    if (pos_ >= text_.size()) return Error("expected a value");
    const char c = text_[pos_];
    if (c == '\'' || c == '"') {
      out.kind = HeaderValue::Kind::kString;
      return ParseString(out.str);
    }
    if (ConsumeWord("True")) {
      out.kind = HeaderValue::Kind::kBool;
      out.boolean = true;
      return absl::OkStatus();
    }
    if (ConsumeWord("False")) {
      out.kind = HeaderValue::Kind::kBool;
      out.boolean = false;
      return absl::OkStatus();
    }
    if (c == '(') return ParseTuple(out);
    if (c == '[') {
      // A structured dtype descr: skip the balanced brackets, the caller rejects it.
      int depth = 0;
      for (; pos_ < text_.size(); ++pos_) {
        if (text_[pos_] == '[') ++depth;
        if (text_[pos_] == ']' && --depth == 0) break;
      }
      if (pos_ == text_.size()) return Error("unterminated list");
      ++pos_;
      out.kind = HeaderValue::Kind::kList;
      return absl::OkStatus();
    }
    return Error("expected a string, True, False or a tuple");
  }

  absl::Status ParseTuple(HeaderValue& out) {
    out.kind = HeaderValue::Kind::kTuple;
    ++pos_;  // '('
    while (true) {
      SkipSpace();
      if (Consume(')')) return absl::OkStatus();
      const size_t begin = pos_;
      while (pos_ < text_.size() && absl::ascii_isdigit(static_cast<unsigned char>(text_[pos_]))) {
        ++pos_;
      }
      int64_t dim = 0;
      if (pos_ == begin || !absl::SimpleAtoi(text_.substr(begin, pos_ - begin), &dim)) {
        return Error("shape entries must be non-negative integers");
      }
      Consume('L');  // Python 2 longs, as old numpy versions wrote them.
      out.ints.push_back(dim);
      SkipSpace();
      if (Consume(',')) continue;
      if (Consume(')')) return absl::OkStatus();
      return Error("expected ',' or ')' in the shape tuple");
    }
  }

  absl::string_view text_;
  absl::string_view label_;
  size_t pos_ = 0;
};

absl::StatusOr<NpyDType> DTypeFromDescr(const HeaderValue& descr, absl::string_view label) {
  if (descr.kind != HeaderValue::Kind::kString) {
    return absl::InvalidArgumentError(absl::StrCat(
        label, ": unsupported dtype: structured arrays are not supported; expected one of ",
        kSupported));
  }
  const std::string& d = descr.str;
  if (d == "<f4") return NpyDType::kFloat32;
  if (d == "<f2") return NpyDType::kFloat16;
  if (d == "<i4") return NpyDType::kInt32;
  if (!d.empty() && d[0] == '>') {
    return absl::InvalidArgumentError(absl::StrCat(label, ": big-endian dtype '", d,
                                                   "' is not supported; convert with arr.astype('<",
                                                   d.substr(1), "')"));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(label, ": unsupported dtype '", d, "'; expected one of ", kSupported));
}

uint32_t LoadLE(absl::string_view bytes, size_t offset, size_t width) {
  uint32_t v = 0;
  for (size_t i = 0; i < width; ++i) {
    v |= static_cast<uint32_t>(static_cast<uint8_t>(bytes[offset + i])) << (8 * i);
  }
  return v;
}

void AppendLE(std::string& out, uint32_t v, size_t width) {
  for (size_t i = 0; i < width; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// Product of the dims, or nullopt when it is implausibly large.
std::optional<int64_t> CountElements(absl::Span<const int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return std::nullopt;
    if (d != 0 && n > kMaxElements / d) return std::nullopt;
    n *= d;
  }
  return n;
}

}  // namespace

absl::string_view NpyDTypeDescr(NpyDType dtype) {
  switch (dtype) {
    case NpyDType::kFloat32:
      return "<f4";
    case NpyDType::kFloat16:
      return "<f2";
    case NpyDType::kInt32:
      return "<i4";
  }
  return "?";
}

size_t NpyDTypeSize(NpyDType dtype) { return dtype == NpyDType::kFloat16 ? 2 : 4; }

int64_t NpyArray::num_elements() const { return CountElements(shape).value_or(-1); }

NpyArray NpyArray::FromFloats(std::vector<int64_t> shape, absl::Span<const float> values,
                              NpyDType dtype) {
  NpyArray a;
  a.dtype = dtype;
  a.shape = std::move(shape);
  if (a.num_elements() != static_cast<int64_t>(values.size()) || dtype == NpyDType::kInt32) {
    std::fprintf(stderr, "NpyArray::FromFloats: %zu values for shape %s as %s\n", values.size(),
                 ShapeString(a.shape).c_str(), std::string(NpyDTypeDescr(dtype)).c_str());
    std::abort();
  }
  a.data.resize(values.size() * NpyDTypeSize(dtype));
  core::EncodeFromFloat(dtype == NpyDType::kFloat32 ? core::DType::kF32 : core::DType::kF16, values,
                        reinterpret_cast<uint8_t*>(a.data.data()));
  return a;
}

NpyArray NpyArray::FromInt32(std::vector<int64_t> shape, absl::Span<const int32_t> values) {
  NpyArray a;
  a.dtype = NpyDType::kInt32;
  a.shape = std::move(shape);
  if (a.num_elements() != static_cast<int64_t>(values.size())) {
    std::fprintf(stderr, "NpyArray::FromInt32: %zu values for shape %s\n", values.size(),
                 ShapeString(a.shape).c_str());
    std::abort();
  }
  a.data.assign(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(int32_t));
  return a;
}

std::vector<float> NpyArray::ToFloats() const {
  const size_t n = data.size() / NpyDTypeSize(dtype);
  std::vector<float> out(n);
  const auto* bytes = reinterpret_cast<const uint8_t*>(data.data());
  switch (dtype) {
    case NpyDType::kFloat32:
      core::DecodeToFloat(core::DType::kF32, bytes, n, out.data());
      break;
    case NpyDType::kFloat16:
      core::DecodeToFloat(core::DType::kF16, bytes, n, out.data());
      break;
    case NpyDType::kInt32:
      for (size_t i = 0; i < n; ++i) {
        int32_t v;
        std::memcpy(&v, bytes + 4 * i, sizeof(v));
        out[i] = static_cast<float>(v);
      }
      break;
  }
  return out;
}

absl::StatusOr<NpyArray> ParseNpy(absl::string_view bytes, absl::string_view label) {
  if (bytes.size() < kMagicSize || bytes.substr(0, kMagicSize) != absl::string_view(kMagic, 6)) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": not a .npy file (missing the \\x93NUMPY magic)"));
  }
  if (bytes.size() < kMagicSize + 2) {
    return absl::InvalidArgumentError(absl::StrCat(label, ": truncated .npy header"));
  }
  const int major = static_cast<uint8_t>(bytes[6]);
  const int minor = static_cast<uint8_t>(bytes[7]);
  if (major < 1 || major > 3 || minor != 0) {
    return absl::InvalidArgumentError(absl::StrCat(label, ": unsupported .npy format version ",
                                                   major, ".", minor,
                                                   " (supported: 1.0, 2.0, 3.0)"));
  }
  const size_t len_width = major == 1 ? 2 : 4;
  const size_t prefix = kMagicSize + 2 + len_width;
  if (bytes.size() < prefix) {
    return absl::InvalidArgumentError(absl::StrCat(label, ": truncated .npy header"));
  }
  const size_t header_len = LoadLE(bytes, kMagicSize + 2, len_width);
  if (header_len > bytes.size() - prefix) {
    return absl::InvalidArgumentError(absl::StrCat(label, ": truncated .npy header: header length ",
                                                   header_len, " but only ", bytes.size() - prefix,
                                                   " bytes follow"));
  }
  // Versions 1 and 2 are latin-1, 3 is utf-8; the keys and values we accept
  // are ASCII either way.
  const absl::string_view header = bytes.substr(prefix, header_len);

  HeaderValue descr;
  bool fortran_order = false;
  NpyArray array;
  if (absl::Status s = HeaderParser(header, label).Parse(descr, fortran_order, array.shape);
      !s.ok()) {
    return s;
  }
  absl::StatusOr<NpyDType> dtype = DTypeFromDescr(descr, label);
  if (!dtype.ok()) return dtype.status();
  array.dtype = *dtype;
  if (fortran_order) {
    return absl::InvalidArgumentError(absl::StrCat(
        label, ": fortran_order arrays are not supported; save np.ascontiguousarray(arr)"));
  }
  const std::optional<int64_t> count = CountElements(array.shape);
  if (!count) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": shape ", ShapeString(array.shape), " is too large"));
  }
  const size_t expected = static_cast<size_t>(*count) * NpyDTypeSize(array.dtype);
  const size_t got = bytes.size() - prefix - header_len;
  if (got < expected) {
    return absl::InvalidArgumentError(absl::StrCat(label, ": truncated data: shape ",
                                                   ShapeString(array.shape), " of '", descr.str,
                                                   "' needs ", expected, " bytes, file has ", got));
  }
  if (got > expected) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": ", got - expected, " unexpected bytes after the data of shape ",
                     ShapeString(array.shape), " of '", descr.str, "'"));
  }
  array.data = std::string(bytes.substr(prefix + header_len));
  return array;
}

absl::StatusOr<NpyArray> ReadNpy(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    const int err = errno;
    const std::string why = std::strerror(err);
    if (err == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": ", why));
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot open: ", why));
  }
  std::string bytes;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) bytes.append(buf, n);
  const bool failed = std::ferror(f) != 0;
  const int err = errno;
  std::fclose(f);
  if (failed) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": read failed: ", std::strerror(err)));
  }
  return ParseNpy(bytes, path);
}

absl::StatusOr<std::string> SerializeNpy(const NpyArray& array) {
  const std::optional<int64_t> count = CountElements(array.shape);
  if (!count || static_cast<size_t>(*count) * NpyDTypeSize(array.dtype) != array.data.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("npy: ", array.data.size(), " data bytes do not match shape ",
                     ShapeString(array.shape), " of '", NpyDTypeDescr(array.dtype), "'"));
  }
  std::string shape = "(";
  for (size_t i = 0; i < array.shape.size(); ++i) {
    absl::StrAppend(&shape, i ? ", " : "", array.shape[i]);
  }
  if (array.shape.size() == 1) shape += ",";
  shape += ")";
  std::string header = absl::StrCat("{'descr': '", NpyDTypeDescr(array.dtype),
                                    "', 'fortran_order': False, 'shape': ", shape, ", }");
  // Version 1 stores the header length in 2 bytes; fall back to version 2.
  int major = 1;
  size_t prefix = kMagicSize + 2 + 2;
  auto padded = [&] {
    const size_t total = prefix + header.size() + 1;  // + '\n'
    return (total + kAlign - 1) / kAlign * kAlign - prefix;
  };
  if (padded() > 0xffff) {
    major = 2;
    prefix = kMagicSize + 2 + 4;
  }
  const size_t header_len = padded();
  header.resize(header_len - 1, ' ');
  header.push_back('\n');

  std::string out(kMagic, kMagicSize);
  out.push_back(static_cast<char>(major));
  out.push_back(0);
  AppendLE(out, static_cast<uint32_t>(header_len), major == 1 ? 2 : 4);
  out += header;
  out += array.data;
  return out;
}

absl::Status WriteNpy(const std::string& path, const NpyArray& array) {
  absl::StatusOr<std::string> bytes = SerializeNpy(array);
  if (!bytes.ok()) return bytes.status();
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": cannot open for writing: ", std::strerror(errno)));
  }
  const bool wrote = std::fwrite(bytes->data(), 1, bytes->size(), f) == bytes->size();
  const int err = errno;
  if (std::fclose(f) != 0 || !wrote) {
    return absl::InternalError(absl::StrCat(path, ": write failed: ", std::strerror(err)));
  }
  return absl::OkStatus();
}

}  // namespace attn::client
