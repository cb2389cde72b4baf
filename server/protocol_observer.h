// Finished requests by the protocol they came over (attention.v1, the Open
// Inference Protocol): the server's metrics count them in
// attn_requests_by_protocol_total. A server-side interface, beside core's
// BatchObserver (whose observations know no protocol).
#ifndef ATTN_SERVER_PROTOCOL_OBSERVER_H_
#define ATTN_SERVER_PROTOCOL_OBSERVER_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace attn::server {

// Protocol label values.
inline constexpr absl::string_view kAttentionV1Protocol = "attention.v1";
inline constexpr absl::string_view kOpenInferenceProtocol = "kserve.v2";

// Thread-safe implementations only.
class ProtocolObserver {
 public:
  virtual ~ProtocolObserver() = default;
  // A request of `protocol` finished with `code` (as the client got it).
  virtual void OnProtocolRequest(absl::string_view protocol, absl::StatusCode code) = 0;

  static ProtocolObserver* Noop() {
    class NoopObserver final : public ProtocolObserver {
     public:
      void OnProtocolRequest(absl::string_view /*protocol*/, absl::StatusCode /*code*/) override {}
    };
    static NoopObserver* const noop = new NoopObserver();
    return noop;
  }
};

}  // namespace attn::server

#endif  // ATTN_SERVER_PROTOCOL_OBSERVER_H_
