#include "server/tls.h"

#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_credentials_options.h"
#include "server/file_watch.h"

namespace attn::server {
namespace {

constexpr char kCertFlag[] = "--tls_cert_file";
constexpr char kKeyFlag[] = "--tls_key_file";
constexpr char kCaFlag[] = "--tls_client_ca_file";

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;
using KeyPtr = std::unique_ptr<EVP_PKEY, KeyFree>;

BioPtr MemBio(const std::string& pem) {
  return BioPtr(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// Never prompts on a terminal for an encrypted key's passphrase (OpenSSL's
// default callback would): an encrypted key simply does not parse.
int NoPassphrase(char* /*buf*/, int /*size*/, int /*rwflag*/, void* /*u*/) { return -1; }

// Every certificate of a PEM bundle, in order: INVALID_ARGUMENT naming
// `flag` when there is none or one does not parse. OpenSSL skips text
// outside PEM blocks and blocks of other types (as gRPC's own reading does).
absl::StatusOr<std::vector<X509Ptr>> ParseCertificates(const std::string& pem, const char* flag) {
  if (pem.empty()) return absl::InvalidArgumentError(absl::StrCat(flag, ": empty file"));
  BioPtr bio = MemBio(pem);
  std::vector<X509Ptr> certs;
  ERR_clear_error();
  for (;;) {
    X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, NoPassphrase, nullptr));
    if (cert == nullptr) break;
    certs.push_back(std::move(cert));
  }
  // The loop ends at the end of the input (no further BEGIN line) or at a
  // block that does not parse.
  const unsigned long err = ERR_peek_last_error();
  ERR_clear_error();
  const bool at_end = ERR_GET_LIB(err) == ERR_LIB_PEM && ERR_GET_REASON(err) == PEM_R_NO_START_LINE;
  if (err != 0 && !at_end) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": certificate ", certs.size() + 1, " does not parse as PEM X.509"));
  }
  if (certs.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": no PEM certificate found"));
  }
  return certs;
}

// Creates an in-memory file holding `contents`, last modified at
// `mtime_seconds`: its fd (close-on-exec), or an error naming `what`.
absl::StatusOr<int> NewMemFile(const char* what, const std::string& contents,
                               int64_t mtime_seconds) {
  const int fd = memfd_create(what, MFD_CLOEXEC);
  if (fd < 0) {
    return absl::InternalError(absl::StrCat(what, ": memfd_create: ", std::strerror(errno)));
  }
  size_t done = 0;
  while (done < contents.size()) {
    const ssize_t n = write(fd, contents.data() + done, contents.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      close(fd);
      return absl::InternalError(absl::StrCat(what, ": write to memfd: ", std::strerror(err)));
    }
    done += static_cast<size_t>(n);
  }
  const timespec times[2] = {{static_cast<time_t>(mtime_seconds), 0},
                             {static_cast<time_t>(mtime_seconds), 0}};
  if (futimens(fd, times) != 0) {
    const int err = errno;
    close(fd);
    return absl::InternalError(absl::StrCat(what, ": futimens: ", std::strerror(err)));
  }
  return fd;
}

}  // namespace

absl::Status ValidateTlsMaterial(const std::string& cert_chain, const std::string& private_key,
                                 const std::string& client_ca) {
  absl::StatusOr<std::vector<X509Ptr>> chain = ParseCertificates(cert_chain, kCertFlag);
  if (!chain.ok()) return chain.status();
  if (private_key.empty())
    return absl::InvalidArgumentError(absl::StrCat(kKeyFlag, ": empty file"));
  BioPtr bio = MemBio(private_key);
  ERR_clear_error();
  KeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassphrase, nullptr));
  ERR_clear_error();
  if (key == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        kKeyFlag, ": no PEM private key found (or it is encrypted, which is not supported)"));
  }
  if (X509_check_private_key(chain->front().get(), key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat(kKeyFlag, ": does not match the certificate in ",
                                                   kCertFlag, " (its first, the leaf)"));
  }
  if (!client_ca.empty()) {
    absl::StatusOr<std::vector<X509Ptr>> ca = ParseCertificates(client_ca, kCaFlag);
    if (!ca.ok()) return ca.status();
  }
  return absl::OkStatus();
}

// gRPC's provider reads the files we give it every kProviderRefresh and
// serves whatever they hold. Measured with gRPC 1.51 (Debian 12), pointing
// FileWatcherCertificateProvider straight at the user's files:
// a key of another certificate, a garbage key or a garbage chain each make
// it log "Invalid private key" / "Invalid cert chain file" and "Update
// handshaker factory failed" at its next refresh, and from then on every
// NEW handshake fails (the client sees UNAVAILABLE "Socket closed") until
// good files return: the old chain is not kept, so one bad write takes TLS
// down (tls_test's
// GrpcProviderAloneStopsServingOnBrokenFiles).
// Hence the validation before anything reaches it.
//
// What it reads are in-memory files at fixed descriptors: the key and the
// chain in ONE memfd (given to gRPC as both the key and the certificate
// path), the client CA in another. A new set is written to new memfds and
// dup3()ed onto the fixed numbers, so every open of /proc/self/fd/<N> sees
// either the old set or the new one, whole. gRPC opens the key path and
// the chain path separately, so a swap between its two reads would pair an
// old key with a new chain; but (1.51's ReadIdentityKeyCertPairFromFiles)
// it stats both paths (seconds) before and after reading and reads again
// when a time moved, and every memfd here
// gets a modification time one second past the last one's at least, so a
// swap anywhere in that window is always seen. OpenSSL's PEM readers skip
// blocks of another type, so gRPC's key reader finds the key and its chain
// reader the certificates in the combined file (every TLS test serves
// from one).
class ServerTls::Impl {
 public:
  Impl(const TlsOptions& options, Logger* logger, AuthObserver* observer)
      : options_(options), logger_(logger), observer_(observer) {}

  ~Impl() {
    // The watch (its thread swaps the files), then gRPC's provider (its
    // thread reads them; every server using credentials_ is gone by now),
    // then the files.
    watch_.reset();
    credentials_.reset();
    provider_.reset();
    if (identity_fd_ >= 0) close(identity_fd_);
    if (ca_fd_ >= 0) close(ca_fd_);
  }

  bool mtls() const { return !options_.client_ca_file.empty(); }

  absl::Status Start(Clock* clock) {
    FileWatch::Options watch;
    watch.paths = {options_.cert_file, options_.key_file};
    if (mtls()) watch.paths.push_back(options_.client_ca_file);
    watch.name = "tls";
    watch.interval = options_.refresh_interval;
    watch.clock = clock;
    watch.logger = logger_;
    if (observer_ != nullptr) {
      watch.on_reload = [observer = observer_](bool ok) {
        observer->CredentialsReloaded("tls", ok);
      };
    }
    absl::StatusOr<std::unique_ptr<FileWatch>> started = FileWatch::Start(
        watch, [this](const std::vector<std::string>& contents) { return Install(contents); });
    if (!started.ok()) {
      // A file that cannot be read is named by its path: add its flag.
      const char* flags[] = {kCertFlag, kKeyFlag, kCaFlag};
      for (size_t i = 0; i < watch.paths.size(); ++i) {
        if (absl::StartsWith(started.status().message(), absl::StrCat(watch.paths[i], ":"))) {
          return absl::Status(started.status().code(),
                              absl::StrCat(flags[i], "=", started.status().message()));
        }
      }
      return started.status();
    }
    watch_ = *std::move(started);

    const std::string identity_path = absl::StrCat("/proc/self/fd/", identity_fd_);
    const std::string ca_path = mtls() ? absl::StrCat("/proc/self/fd/", ca_fd_) : "";
    provider_ = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
        identity_path, identity_path, ca_path,
        static_cast<unsigned int>(absl::ToInt64Seconds(kProviderRefresh)));
    grpc::experimental::TlsServerCredentialsOptions creds(provider_);
    creds.watch_identity_key_cert_pairs();
    if (mtls()) {
      creds.watch_root_certs();
      creds.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    } else {
      creds.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
    }
    credentials_ = grpc::experimental::TlsServerCredentials(creds);
    if (credentials_ == nullptr) return absl::InternalError("tls: gRPC refused the credentials");
    return absl::OkStatus();
  }

  std::shared_ptr<grpc::ServerCredentials> credentials() const { return credentials_; }
  FileWatch& watch() { return *watch_; }

 private:
  // FileWatch's loader (never two at once): validates, then swaps the
  // in-memory files. Nothing changes unless every step succeeds.
  absl::Status Install(const std::vector<std::string>& contents) {
    const std::string& chain = contents[0];
    const std::string& key = contents[1];
    const std::string no_ca;
    const std::string& ca = mtls() ? contents[2] : no_ca;
    if (mtls() && ca.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(kCaFlag, ": empty file"));
    }
    absl::Status valid = ValidateTlsMaterial(chain, key, ca);
    if (!valid.ok()) return valid;
    // The chain first (leaf first), then the key, each block on its own
    // lines.
    std::string identity = chain;
    if (!identity.empty() && identity.back() != '\n') identity.push_back('\n');
    identity.append(key);
    // Distinct, increasing modification times (see above).
    const int64_t mtime = std::max<int64_t>(absl::ToUnixSeconds(absl::Now()), last_mtime_ + 1);
    absl::StatusOr<int> new_identity = NewMemFile("attn-tls-identity", identity, mtime);
    if (!new_identity.ok()) return new_identity.status();
    int new_ca = -1;
    if (mtls()) {
      absl::StatusOr<int> made = NewMemFile("attn-tls-client-ca", ca, mtime);
      if (!made.ok()) {
        close(*new_identity);
        return made.status();
      }
      new_ca = *made;
    }
    // The first set reserves the descriptor numbers; later ones replace
    // what they hold.
    if (absl::Status s = Swap(*new_identity, &identity_fd_); !s.ok()) {
      if (new_ca >= 0) close(new_ca);
      return s;
    }
    last_mtime_ = mtime;
    if (new_ca >= 0) return Swap(new_ca, &ca_fd_);
    return absl::OkStatus();
  }

  // Puts `fresh` at *fixed (or makes it the fixed one when there is none
  // yet); consumes `fresh`.
  static absl::Status Swap(int fresh, int* fixed) {
    if (*fixed < 0) {
      *fixed = fresh;
      return absl::OkStatus();
    }
    int done;
    do {
      done = dup3(fresh, *fixed, O_CLOEXEC);
    } while (done < 0 && errno == EINTR);
    const int err = errno;
    close(fresh);
    if (done < 0) return absl::InternalError(absl::StrCat("tls: dup3: ", std::strerror(err)));
    return absl::OkStatus();
  }

  const TlsOptions options_;
  Logger* const logger_;
  AuthObserver* const observer_;
  // Written by the loader only (Start's call, then the watch thread).
  int identity_fd_ = -1;
  int ca_fd_ = -1;
  int64_t last_mtime_ = 0;
  std::shared_ptr<grpc::experimental::FileWatcherCertificateProvider> provider_;
  std::shared_ptr<grpc::ServerCredentials> credentials_;
  std::unique_ptr<FileWatch> watch_;
};

absl::StatusOr<std::unique_ptr<ServerTls>> ServerTls::Create(const TlsOptions& options,
                                                             Logger* logger, AuthObserver* observer,
                                                             Clock* clock) {
  if (options.cert_file.empty() != options.key_file.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kCertFlag, " and ", kKeyFlag, ": set both or neither (",
                     options.cert_file.empty() ? kCertFlag : kKeyFlag, " is empty)"));
  }
  if (!options.enabled()) {
    return absl::InvalidArgumentError(
        options.client_ca_file.empty()
            ? absl::StrCat(kCertFlag, " and ", kKeyFlag, ": required")
            : absl::StrCat(kCaFlag, ": needs ", kCertFlag, " and ", kKeyFlag, " (mTLS is TLS)"));
  }
  if (options.refresh_interval < absl::Seconds(1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls_refresh_interval: expected at least 1s, got ",
                     absl::FormatDuration(options.refresh_interval)));
  }
  std::unique_ptr<ServerTls> tls(new ServerTls());
  tls->impl_ = std::make_unique<Impl>(options, logger, observer);
  absl::Status started = tls->impl_->Start(clock);
  if (!started.ok()) return started;
  if (logger != nullptr) {
    logger->Log(LogLevel::kInfo, "tls_enabled",
                {{"mtls", tls->impl_->mtls() ? "true" : "false"},
                 {"refresh_interval", absl::FormatDuration(options.refresh_interval)}});
  }
  return tls;
}

ServerTls::ServerTls() = default;
ServerTls::~ServerTls() = default;

std::shared_ptr<grpc::ServerCredentials> ServerTls::credentials() const {
  return impl_->credentials();
}

absl::Status ServerTls::ReloadNow() { return impl_->watch().PollNow(); }

int64_t ServerTls::loads() const { return impl_->watch().loads(); }

}  // namespace attn::server
