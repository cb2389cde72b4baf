#include "client/bench/load_manager.h"

#include <atomic>
#include <chrono>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "attention/v1/attention.pb.h"
#include "core/mutex.h"

namespace attn::bench {
namespace {

using attention::v1::AttendRequest;
using attention::v1::AttendResponse;

// Closed loop over unary AttendAsync: `slots` requests always in flight. A
// slot whose request failed waits `error_backoff` before its next one (on a
// timer thread: gRPC's callback threads must not sleep).
class ClosedLoop final : public LoadManager {
 public:
  ClosedLoop(client::AttentionClient* client, const Workload* w, Recorder* rec, int slots,
             absl::Duration error_backoff)
      : client_(client),
        w_(w),
        rec_(rec),
        slots_(slots),
        backoff_(absl::ToChronoNanoseconds(error_backoff)) {}
  void Start() override {
    for (int s = 0; s < slots_; ++s) {
      auto slot = std::make_unique<Slot>();
      slot->index = static_cast<size_t>(s) % w_->requests.size();
      slots_v_.push_back(std::move(slot));
    }
    {
      MutexLock lock(&mu_);
      in_flight_ = slots_;
    }
    timer_ = std::thread([this] { TimerLoop(); });
    for (auto& slot : slots_v_) Send(slot.get());
  }
  void Stop() override {
    {
      MutexLock lock(&mu_);
      stopping_ = true;
      cv_.SignalAll();
      while (in_flight_ > 0) cv_.Wait(&mu_);
    }
    timer_.join();
  }

 private:
  struct Slot {
    size_t index = 0;
    AttendResponse response;
    Clock::time_point sent;
  };
  void Send(Slot* slot) {
    slot->response.Clear();
    slot->sent = Clock::now();
    client_->AttendAsync(&w_->requests[slot->index], &slot->response,
                         [this, slot](absl::Status status) { Done(slot, status); });
  }
  // Slot ends (stopping) or goes on, now or after the backoff.
  void Done(Slot* slot, const absl::Status& status) {
    rec_->Record(slot->index, *w_, Clock::now() - slot->sent, status, slot->response);
    slot->index = (slot->index + static_cast<size_t>(slots_)) % w_->requests.size();
    {
      MutexLock lock(&mu_);
      if (stopping_) {
        if (--in_flight_ == 0) cv_.SignalAll();
        return;
      }
      if (!status.ok() && backoff_ > Clock::duration::zero()) {
        delayed_.emplace_back(Clock::now() + backoff_, slot);
        cv_.SignalAll();
        return;
      }
    }
    Send(slot);
  }
  void TimerLoop() {
    for (;;) {
      std::vector<Slot*> due;
      {
        MutexLock lock(&mu_);
        for (;;) {
          const auto now = Clock::now();
          for (auto it = delayed_.begin(); it != delayed_.end();) {
            if (stopping_ || it->first <= now) {
              due.push_back(it->second);
              it = delayed_.erase(it);
            } else {
              ++it;
            }
          }
          if (!due.empty() || stopping_) break;
          if (delayed_.empty()) {
            cv_.Wait(&mu_);
          } else {
            cv_.WaitWithTimeout(&mu_, absl::Milliseconds(1));
          }
        }
        if (stopping_) {  // the delayed slots end here
          in_flight_ -= static_cast<int>(due.size());
          if (in_flight_ == 0) cv_.SignalAll();
          return;
        }
      }
      for (Slot* slot : due) Send(slot);
    }
  }

  client::AttentionClient* const client_;
  const Workload* const w_;
  Recorder* const rec_;
  const int slots_;
  const Clock::duration backoff_;
  std::vector<std::unique_ptr<Slot>> slots_v_;
  std::thread timer_;
  Mutex mu_;
  CondVar cv_;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;  // slots not yet ended
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::pair<Clock::time_point, Slot*>> delayed_ ABSL_GUARDED_BY(mu_);
};

// Closed loop over one AttendStream: `slots` requests in flight on it.
class StreamLoop final : public LoadManager {
 public:
  StreamLoop(client::AttentionClient* client, const Workload* w, Recorder* rec, int slots)
      : client_(client), w_(w), rec_(rec), slots_(slots) {}
  void Start() override {
    stream_ = client_->AttendStream([this](const AttendResponse& r) { OnResponse(r); });
    for (int s = 0; s < slots_; ++s) SendNext();
  }
  void Stop() override {
    {
      MutexLock lock(&mu_);
      stopping_ = true;
    }
    stream_->WritesDone();
    const absl::Status end = stream_->Wait();
    if (!end.ok()) std::cerr << "attention-bench: stream ended: " << end << "\n";
  }

 private:
  void SendNext() {
    AttendRequest request;
    {
      MutexLock lock(&mu_);
      if (stopping_) return;
      const uint64_t id = next_id_++;
      const size_t index = id % w_->requests.size();
      sent_[id] = {index, Clock::now()};
      request = w_->requests[index];  // a copy: its request_id differs
      request.set_request_id(absl::StrCat(id));
    }
    stream_->Write(request);
  }
  void OnResponse(const AttendResponse& r) {
    uint64_t id = 0;
    Sent s;
    {
      MutexLock lock(&mu_);
      if (!absl::SimpleAtoi(r.request_id(), &id) || !sent_.count(id)) return;
      s = sent_[id];
      sent_.erase(id);
    }
    const absl::Status status =
        r.status().code() == 0
            ? absl::OkStatus()
            : absl::Status(static_cast<absl::StatusCode>(r.status().code()), r.status().message());
    rec_->Record(s.index, *w_, Clock::now() - s.time, status, r);
    SendNext();
  }

  struct Sent {
    size_t index = 0;
    Clock::time_point time;
  };
  client::AttentionClient* const client_;
  const Workload* const w_;
  Recorder* const rec_;
  const int slots_;
  std::unique_ptr<client::AttentionClient::Stream> stream_;
  Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<uint64_t, Sent> sent_ ABSL_GUARDED_BY(mu_);
};

// Open loop: requests leave at a fixed rate (constant gaps or Poisson
// arrivals) whatever the server does. Latency counts from the scheduled
// send time, so a stalled server shows up in it (no coordinated omission).
class OpenLoop final : public LoadManager {
 public:
  OpenLoop(client::AttentionClient* client, const Workload* w, Recorder* rec, double rate,
           bool poisson, uint64_t seed)
      : client_(client), w_(w), rec_(rec), rate_(rate), poisson_(poisson), seed_(seed) {}
  void Start() override {
    thread_ = std::thread([this] { Run(); });
  }
  void Stop() override {
    stop_.store(true);
    thread_.join();
    MutexLock lock(&mu_);
    while (in_flight_ > 0) cv_.Wait(&mu_);
  }

 private:
  struct Call {
    size_t index;
    Clock::time_point scheduled;
    AttendResponse response;
  };
  void Run() {
    std::mt19937_64 rng(seed_ + 7);  // not the request data's sequence
    std::exponential_distribution<double> gap(rate_);
    Clock::time_point next = Clock::now();
    size_t index = 0;
    while (!stop_.load()) {
      std::this_thread::sleep_until(next);
      auto call = std::make_unique<Call>();
      call->index = index++ % w_->requests.size();
      call->scheduled = next;
      {
        MutexLock lock(&mu_);
        ++in_flight_;
      }
      Call* c = call.release();
      client_->AttendAsync(&w_->requests[c->index], &c->response, [this, c](absl::Status status) {
        std::unique_ptr<Call> owned(c);
        rec_->Record(owned->index, *w_, Clock::now() - owned->scheduled, status, owned->response);
        MutexLock lock(&mu_);
        if (--in_flight_ == 0) cv_.SignalAll();
      });
      const double seconds = poisson_ ? gap(rng) : 1.0 / rate_;
      next += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
    }
  }

  client::AttentionClient* const client_;
  const Workload* const w_;
  Recorder* const rec_;
  const double rate_;
  const bool poisson_;
  const uint64_t seed_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  Mutex mu_;
  CondVar cv_;
  int64_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace

std::unique_ptr<LoadManager> MakeConcurrencyManager(client::AttentionClient* client,
                                                    const Workload* workload, Recorder* recorder,
                                                    int slots, absl::Duration error_backoff) {
  return std::make_unique<ClosedLoop>(client, workload, recorder, slots, error_backoff);
}

std::unique_ptr<LoadManager> MakeStreamManager(client::AttentionClient* client,
                                               const Workload* workload, Recorder* recorder,
                                               int slots) {
  return std::make_unique<StreamLoop>(client, workload, recorder, slots);
}

std::unique_ptr<LoadManager> MakeRequestRateManager(client::AttentionClient* client,
                                                    const Workload* workload, Recorder* recorder,
                                                    double rate, Arrivals arrivals, uint64_t seed) {
  return std::make_unique<OpenLoop>(client, workload, recorder, rate,
                                    arrivals == Arrivals::kPoisson, seed);
}

}  // namespace attn::bench
