// The connection flags every C++ client tool shares (attention-cli,
// attention-bench): TLS files and the bearer token, defined once here so the
// tools neither duplicate nor drift from each other.
//
//   --tls_ca_file=PEM       CA certificates the server's certificate must chain to
//                           (empty: the system roots)
//   --tls_cert_file=PEM     client certificate for mutual TLS (with --tls_key_file)
//   --tls_key_file=PEM      its private key
//   --tls_server_name=NAME  name checked against the server's certificate
//                           (default: the target's host)
//   --token=TOKEN           bearer token; empty falls back to $ATTN_TOKEN
//
// Any --tls_* flag turns TLS on (--tls_server_name alone: the system roots);
// without one the channel is plaintext. A token on the command line is
// visible to every user of the machine (ps, /proc/PID/cmdline): prefer the
// ATTN_TOKEN environment variable. The token is never printed.
//
// The house rule keeps ABSL_FLAG in main.cc files; these flags are the one
// exception, because two mains share them. Everything but
// ApplyConnectionFlags takes plain values, so it is tested without flags.
#ifndef ATTN_CLIENT_CONNECTION_FLAGS_H_
#define ATTN_CLIENT_CONNECTION_FLAGS_H_

#include <string>

#include "absl/status/status.h"
#include "client/attention_client.h"

namespace attn::client {

// The environment variable a token comes from when --token is empty.
inline constexpr char kTokenEnvironmentVariable[] = "ATTN_TOKEN";

// The values of the connection flags.
struct ConnectionSettings {
  std::string tls_ca_file;
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_server_name;
  std::string token;  // empty: `env_token`
};

// Sets options->tls (LoadTls, when any tls_* setting is given; otherwise
// leaves it as it was) and options->token (settings.token, else `env_token` when
// not null). Errors are LoadTls's, naming the flag and the file, and nothing
// is changed then.
absl::Status ApplyConnectionSettings(const ConnectionSettings& settings, const char* env_token,
                                     AttentionClient::Options* options);

// The flags' current values.
ConnectionSettings ConnectionSettingsFromFlags();

// ApplyConnectionSettings(ConnectionSettingsFromFlags(), getenv(ATTN_TOKEN), options).
absl::Status ApplyConnectionFlags(AttentionClient::Options* options);

}  // namespace attn::client

#endif  // ATTN_CLIENT_CONNECTION_FLAGS_H_
