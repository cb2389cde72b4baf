// Server TLS and mutual TLS whose certificates rotate without a restart.
//
// gRPC's FileWatcherCertificateProvider re-reads files, but it never checks
// that a key matches its certificate, and a half-written or corrupt file
// would be served as it is (every handshake then fails). So the user's
// files are watched here (FileWatch, every refresh_interval) and each new
// set is validated with OpenSSL first: the certificate chain and the key
// parse, the key matches the leaf certificate, and the client CA (mTLS)
// parses. Only a valid set is handed to gRPC's provider, which reads it from
// in-memory files (memfd, swapped atomically: the key is never written to
// disk by us) every kProviderRefresh. A rejected set is logged
// (event=tls_reload_failed, naming the file and the reason, never
// contents) and the last good chain keeps serving.
//
// A rotated chain is therefore served within refresh_interval +
// kProviderRefresh (+ the time to read and check it) of being written.
//
// mTLS (client_ca_file set): every connection must present a client
// certificate that chains to that CA, or the handshake fails.
//
// Thread-safe.
#ifndef ATTN_SERVER_TLS_H_
#define ATTN_SERVER_TLS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/clock.h"
#include "grpcpp/security/server_credentials.h"
#include "server/auth.h"
#include "server/log.h"

namespace attn::server {

struct TlsOptions {
  // Both or neither; neither means plaintext.
  std::string cert_file;  // PEM chain, leaf first
  std::string key_file;   // PEM private key of the leaf
  // Set: mutual TLS, clients must present a certificate from this CA.
  std::string client_ca_file;
  // How often the files are re-read; at least 1 s.
  absl::Duration refresh_interval = absl::Seconds(10);

  bool enabled() const { return !cert_file.empty() || !key_file.empty(); }
};

class ServerTls {
 public:
  // How often gRPC's provider re-reads the validated in-memory copies.
  static constexpr absl::Duration kProviderRefresh = absl::Seconds(1);

  // Reads and validates the files: INVALID_ARGUMENT naming the flag and
  // what is wrong (--tls_key_file: does not match the certificate in
  // --tls_cert_file, ...); also for a cert without a key (or the reverse), a
  // client CA without them, or a refresh_interval under 1 s. `observer`
  // (null: none) is told of each reload attempt after this one
  // (CredentialsReloaded("tls", ok)); it, `logger` (null: no log lines) and
  // `clock` (the file polls) must outlive the ServerTls.
  static absl::StatusOr<std::unique_ptr<ServerTls>> Create(
      const TlsOptions& options, Logger* logger, AuthObserver* observer = AuthObserver::Noop(),
      Clock* clock = Clock::Real());
  ~ServerTls();

  // Credentials for ServerBuilder::AddListeningPort; the same for every
  // port, they follow rotations. Every server using them must be destroyed
  // before this ServerTls (it owns the in-memory files they read).
  std::shared_ptr<grpc::ServerCredentials> credentials() const;

  // Re-reads the files now (tests); the FileWatch's status.
  absl::Status ReloadNow();
  // Chains validated and handed to gRPC so far (Create's included).
  int64_t loads() const;

 private:
  ServerTls();
  class Impl;
  std::unique_ptr<Impl> impl_;
};

// Validates one set of PEM contents (the checks above): INVALID_ARGUMENT
// naming the flag (--tls_cert_file / --tls_key_file / --tls_client_ca_file)
// and the reason, never the contents. An empty `client_ca` means no mTLS
// (ServerTls refuses an empty --tls_client_ca_file itself). An encrypted key
// is refused (no passphrase is ever asked for).
absl::Status ValidateTlsMaterial(const std::string& cert_chain, const std::string& private_key,
                                 const std::string& client_ca);

}  // namespace attn::server

#endif  // ATTN_SERVER_TLS_H_
