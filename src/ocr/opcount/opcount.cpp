// Counts the ATen operators the calling thread dispatches, through libtorch's RecordFunction
// callbacks (the same hook its profiler uses): every operator, the top-level ones (those not
// called from inside another operator: what the caller issued), and the host reads (see
// is_host_read). Used by dsocr's tests
// and benchmarks to count the work of one decode step on libtorch's path; see opcount.rs.

#include <ATen/DeviceAccelerator.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>

namespace {

struct Counts {
  int64_t all = 0;
  int64_t top = 0;
  int64_t host_reads = 0;
  int depth = 0;
};

thread_local Counts counts;
// Top-level operators by name (what the caller issued), for the breakdown of a count.
thread_local std::map<std::string, int64_t> top_names;
thread_local at::CallbackHandle handle = 0;

// Operators whose CUDA implementation reads a value back to the host before it returns
// (a scalar, or a size that depends on the data).
const char* const kSyncing[] = {
    "aten::item",         "aten::_local_scalar_dense", "aten::bincount",
    "aten::nonzero",      "aten::masked_select",       "aten::_unique2",
    "aten::unique_dim",   "aten::unique_consecutive",  "aten::repeat_interleave",
    "aten::is_nonzero",   "aten::equal",               "aten::allclose",
};

// A host read: an operator that synchronises (above) issued by the caller, or a copy from a
// device into host memory at any depth. Reads inside a CPU operator's own implementation are
// plain memory reads, not waits for a device, and are not counted.
bool is_host_read(const at::RecordFunction& fn, bool top) {
  const char* name = fn.name();
  if (top) {
    for (const char* s : kSyncing) {
      if (std::strcmp(name, s) == 0) {
        return true;
      }
    }
  }
  if (std::strcmp(name, "aten::copy_") != 0) {
    return false;
  }
  // copy_(self = destination, src): a read when the destination is on the CPU and the
  // source is not.
  auto inputs = fn.inputs();
  if (inputs.size() < 2 || !inputs[0].isTensor() || !inputs[1].isTensor()) {
    return false;
  }
  return inputs[0].toTensor().device().is_cpu() && !inputs[1].toTensor().device().is_cpu();
}

std::unique_ptr<at::ObserverContext> on_start(const at::RecordFunction& fn) {
  const bool top = counts.depth == 0;
  counts.all += 1;
  if (top) {
    counts.top += 1;
    top_names[fn.name()] += 1;
  }
  counts.depth += 1;
  if (is_host_read(fn, top)) {
    counts.host_reads += 1;
  }
  return nullptr;
}

void on_end(const at::RecordFunction&, at::ObserverContext*) {
  counts.depth -= 1;
}

}  // namespace

extern "C" {

// Start counting on this thread (from zero). Returns 0, or -1 when already counting.
int dsocr_opcount_start() {
  if (handle != 0) {
    return -1;
  }
  counts = Counts{};
  top_names.clear();
  handle = at::addThreadLocalCallback(at::RecordFunctionCallback(on_start, on_end)
                                          .needsInputs(true)
                                          .scopes({at::RecordScope::FUNCTION}));
  return 0;
}

// Stop counting on this thread and write the counts. Returns 0, or -1 when not counting.
int dsocr_opcount_stop(int64_t* all, int64_t* top, int64_t* host_reads) {
  if (handle == 0) {
    return -1;
  }
  at::removeCallback(handle);
  handle = 0;
  *all = counts.all;
  *top = counts.top;
  *host_reads = counts.host_reads;
  return 0;
}

// The top-level operators of the last count on this thread, one "name count" line each
// (by name), written into `buf` (`cap` bytes, NUL-terminated when it fits). Returns the
// length the whole text needs, without the NUL.
int64_t dsocr_opcount_names(char* buf, int64_t cap) {
  std::string text;
  for (const auto& [name, n] : top_names) {
    text += name + " " + std::to_string(n) + "\n";
  }
  if (cap > 0) {
    const auto len = std::min<int64_t>(cap - 1, static_cast<int64_t>(text.size()));
    std::memcpy(buf, text.data(), static_cast<size_t>(len));
    buf[len] = '\0';
  }
  return static_cast<int64_t>(text.size());
}

// The caching allocator's bytes on accelerator `device` (CUDA): currently allocated, their
// peak, currently reserved from the driver, and that peak. Returns 0, or -1 when there is no
// such accelerator. (nvidia-smi's per-process list is empty inside containers.)
int dsocr_accelerator_memory(int device, int64_t* allocated, int64_t* allocated_peak,
                             int64_t* reserved, int64_t* reserved_peak) {
  try {
    if (!at::accelerator::getAccelerator(false).has_value() ||
        device >= at::accelerator::deviceCount()) {
      return -1;
    }
    const auto stats = at::accelerator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    const auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *allocated = stats.allocated_bytes[all].current;
    *allocated_peak = stats.allocated_bytes[all].peak;
    *reserved = stats.reserved_bytes[all].current;
    *reserved_peak = stats.reserved_bytes[all].peak;
    return 0;
  } catch (...) {
    return -1;
  }
}

// Free and total bytes of accelerator `device` as its driver reports them (CUDA's
// cudaMemGetInfo). Returns 0, or -1 when there is no such accelerator.
int dsocr_accelerator_free(int device, int64_t* free, int64_t* total) {
  try {
    if (!at::accelerator::getAccelerator(false).has_value() ||
        device >= at::accelerator::deviceCount()) {
      return -1;
    }
    const auto info = at::accelerator::getMemoryInfo(static_cast<c10::DeviceIndex>(device));
    *free = static_cast<int64_t>(info.first);
    *total = static_cast<int64_t>(info.second);
    return 0;
  } catch (...) {
    return -1;
  }
}

}  // extern "C"
