#include "client/connection_flags.h"

#include <cstdlib>
#include <optional>
#include <string>
#include <utility>

#include "absl/flags/flag.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

ABSL_FLAG(std::string, tls_ca_file, "",
          "TLS: PEM file of the CA certificates the server's certificate must chain to (empty: "
          "the system roots). Any --tls_* flag turns TLS on.");
ABSL_FLAG(std::string, tls_cert_file, "",
          "Mutual TLS: PEM file of this client's certificate (with --tls_key_file).");
ABSL_FLAG(std::string, tls_key_file, "", "Mutual TLS: PEM file of the client certificate's key.");
ABSL_FLAG(std::string, tls_server_name, "",
          "TLS: the name checked against the server's certificate (default: the target's host).");
ABSL_FLAG(std::string, token, "",
          "Bearer token sent as 'authorization: Bearer TOKEN' on every call; empty: $ATTN_TOKEN. "
          "A token on the command line is visible in ps: prefer ATTN_TOKEN.");

namespace attn::client {

absl::Status ApplyConnectionSettings(const ConnectionSettings& settings, const char* env_token,
                                     AttentionClient::Options* options) {
  std::optional<AttentionClient::Tls> tls;
  if (!settings.tls_ca_file.empty() || !settings.tls_cert_file.empty() ||
      !settings.tls_key_file.empty() || !settings.tls_server_name.empty()) {
    absl::StatusOr<AttentionClient::Tls> loaded =
        LoadTls(settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file,
                settings.tls_server_name);
    if (!loaded.ok()) {
      return absl::Status(loaded.status().code(), absl::StrCat("--", loaded.status().message()));
    }
    tls = *std::move(loaded);
  }
  if (tls) options->tls = std::move(tls);
  if (!settings.token.empty()) {
    options->token = settings.token;
  } else if (env_token != nullptr) {
    options->token = env_token;
  }
  return absl::OkStatus();
}

ConnectionSettings ConnectionSettingsFromFlags() {
  ConnectionSettings s;
  s.tls_ca_file = absl::GetFlag(FLAGS_tls_ca_file);
  s.tls_cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  s.tls_key_file = absl::GetFlag(FLAGS_tls_key_file);
  s.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  s.token = absl::GetFlag(FLAGS_token);
  return s;
}

absl::Status ApplyConnectionFlags(AttentionClient::Options* options) {
  return ApplyConnectionSettings(ConnectionSettingsFromFlags(),
                                 std::getenv(kTokenEnvironmentVariable), options);
}

}  // namespace attn::client
