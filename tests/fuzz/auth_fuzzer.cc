// The security parsers on arbitrary bytes: the token file, the /metrics
// users file, the `authorization` header a client sends, and TLS material.
// The first byte picks the parser. What must hold:
// - a token or users file is accepted or refused with INVALID_ARGUMENT;
//   an accepted table holds only known roles and valid names, and written
//   back out it parses to the same table;
// - a header is allowed only when it is exactly "<bearer in any case>
//   <the token>" (surrounding spaces aside) for the one token the
//   authorizer knows; every refusal is UNAUTHENTICATED;
// - TLS material (three parts split at NUL bytes) is OK or INVALID_ARGUMENT.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "server/auth.h"
#include "server/tls.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using attn::server::Authorizer;
using attn::server::Digest;
using attn::server::Role;
using attn::server::RoleSet;

constexpr char kToken[] = "fuzz-token-0123456789";
constexpr RoleSet kAllRoles = static_cast<RoleSet>(Role::kInfer) |
                              static_cast<RoleSet>(Role::kRead) |
                              static_cast<RoleSet>(Role::kAdmin);

std::string Hex(const Digest& d) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  for (uint8_t b : d) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 15]);
  }
  return out;
}

std::string Roles(RoleSet roles) {
  std::string out;
  for (Role r : {Role::kInfer, Role::kRead, Role::kAdmin}) {
    if (roles & static_cast<RoleSet>(r)) {
      absl::StrAppend(&out, out.empty() ? "" : ",", attn::server::RoleName(r));
    }
  }
  return out;
}

bool ValidName(absl::string_view name) {
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return false;
    }
  }
  return true;
}

// One authorizer for the whole run, knowing kToken with role infer.
Authorizer* TheAuthorizer() {
  static Authorizer* const auth = [] {
    char path[] = "/tmp/auth_fuzzer_tokens.XXXXXX";
    const int fd = mkstemp(path);
    FUZZ_CHECK(fd >= 0, "mkstemp");
    const std::string line = absl::StrCat(Hex(attn::server::Sha256(kToken)), " infer fuzz\n");
    FUZZ_CHECK(write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size()), "write");
    close(fd);
    Authorizer::Options options;
    options.tokens_file = path;
    options.refresh_interval = absl::Hours(24);
    auto created = Authorizer::Create(options);
    FUZZ_CHECK(created.ok(), created.status().ToString());
    std::remove(path);
    return created->release();
  }();
  return auth;
}

void FuzzTokenFile(absl::string_view contents) {
  auto table = attn::server::ParseTokenFile(contents, "tokens.txt");
  if (!table.ok()) {
    FUZZ_CHECK(absl::IsInvalidArgument(table.status()), table.status().ToString());
    FUZZ_CHECK(absl::StartsWith(table.status().message(), "tokens.txt:"),
               "the error does not name the file: " + table.status().ToString());
    return;
  }
  std::string rewritten;
  for (const auto& e : *table) {
    FUZZ_CHECK(e.roles != 0 && (e.roles & ~kAllRoles) == 0, "accepted an unknown or empty role");
    FUZZ_CHECK(ValidName(e.name), "accepted a bad name");
    absl::StrAppend(&rewritten, Hex(e.digest), " ", Roles(e.roles), e.name.empty() ? "" : " ",
                    e.name, "\n");
  }
  auto again = attn::server::ParseTokenFile(rewritten, "rewritten.txt");
  FUZZ_CHECK(again.ok(), again.status().ToString());
  FUZZ_CHECK(again->size() == table->size(), "a rewritten table has another size");
  for (size_t i = 0; i < table->size(); ++i) {
    FUZZ_CHECK((*again)[i].digest == (*table)[i].digest && (*again)[i].roles == (*table)[i].roles &&
                   (*again)[i].name == (*table)[i].name,
               "a rewritten table differs");
  }
}

void FuzzUsersFile(absl::string_view contents) {
  auto users = attn::server::ParseMetricsAuthFile(contents, "users.txt");
  if (!users.ok()) {
    FUZZ_CHECK(absl::IsInvalidArgument(users.status()), users.status().ToString());
    return;
  }
  std::string rewritten;
  for (const auto& u : *users) {
    FUZZ_CHECK(!u.user.empty(), "accepted an empty user");
    absl::StrAppend(&rewritten, u.user, " ", Hex(u.password_digest), "\n");
  }
  auto again = attn::server::ParseMetricsAuthFile(rewritten, "rewritten.txt");
  FUZZ_CHECK(again.ok(), again.status().ToString());
  FUZZ_CHECK(again->size() == users->size(), "a rewritten users file has another size");
  for (size_t i = 0; i < users->size(); ++i) {
    FUZZ_CHECK((*again)[i].user == (*users)[i].user &&
                   (*again)[i].password_digest == (*users)[i].password_digest,
               "a rewritten users file differs");
  }
}

void FuzzHeader(absl::string_view header) {
  const std::string value(header);
  const absl::Status s =
      TheAuthorizer()->Check("/attention.v1.AttentionService/Attend", &value, "fuzz");
  // What the header must be for the call to pass.
  const size_t space = header.find(' ');
  const bool expected = space != absl::string_view::npos &&
                        absl::EqualsIgnoreCase(header.substr(0, space), "bearer") &&
                        absl::StripAsciiWhitespace(header.substr(space + 1)) == kToken;
  FUZZ_CHECK(s.ok() == expected, "allowed or refused the wrong header: " + s.ToString());
  if (!s.ok()) FUZZ_CHECK(absl::IsUnauthenticated(s), s.ToString());
  // The token is never echoed.
  FUZZ_CHECK(!absl::StrContains(s.message(), kToken), "the message holds the token");
}

void FuzzTlsMaterial(absl::string_view bytes) {
  std::vector<std::string> parts = absl::StrSplit(bytes, absl::MaxSplits('\0', 2));
  parts.resize(3);
  const absl::Status s = attn::server::ValidateTlsMaterial(parts[0], parts[1], parts[2]);
  FUZZ_CHECK(s.ok() || absl::IsInvalidArgument(s), s.ToString());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const absl::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 4) {
    case 0:
      FuzzTokenFile(rest);
      break;
    case 1:
      FuzzUsersFile(rest);
      break;
    case 2:
      FuzzHeader(rest);
      break;
    default:
      FuzzTlsMaterial(rest);
      break;
  }
  return 0;
}
