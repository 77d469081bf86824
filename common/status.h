// Status and StatusOr<T>: errors as values at every boundary that touches files, DICOM, sockets
// or config (after LevelDB's Status). A Status carries a code and a message that names what
// failed (the file, the site, the round) and why.
#pragma once

#include <cassert>
#include <optional>
#include <string>
#include <utility>

namespace fedrad {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,  // bad config value, bad CLI argument
  kNotFound,         // missing file or key
  kCorrupt,          // malformed file or message
  kUnsupported,      // a valid input we do not handle (e.g. a transfer syntax)
  kIoError,          // read/write/socket failure
  kTimeout,          // a deadline passed
  kInternal,         // a bug or an exception from a library (torch, DCMTK)
};

const char* status_code_name(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok_status() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "Corrupt: file.dcm: no pixel data" style, for logs and CLI output.
  std::string to_string() const;

  // Returns a copy whose message is prefixed with `context` ("site-a: " + message).
  Status with_context(const std::string& context) const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status ok_status() { return Status(); }
inline Status invalid_argument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status not_found(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status corrupt(std::string m) { return {StatusCode::kCorrupt, std::move(m)}; }
inline Status unsupported(std::string m) { return {StatusCode::kUnsupported, std::move(m)}; }
inline Status io_error(std::string m) { return {StatusCode::kIoError, std::move(m)}; }
inline Status timeout_error(std::string m) { return {StatusCode::kTimeout, std::move(m)}; }
inline Status internal_error(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

// Either a value or a non-OK Status. Accessing value() of an error is a bug (asserts).
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(Status status) : status_(std::move(status)) { assert(!status_.ok()); }  // NOLINT
  StatusOr(T value) : value_(std::move(value)) {}                                   // NOLINT

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }

  T& value() & { assert(ok()); return *value_; }
  const T& value() const& { assert(ok()); return *value_; }
  T&& value() && { assert(ok()); return std::move(*value_); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace fedrad

// Propagates a non-OK Status to the caller.
#define FEDRAD_RETURN_IF_ERROR(expr)          \
  do {                                        \
    ::fedrad::Status _st = (expr);            \
    if (!_st.ok()) return _st;                \
  } while (0)

#define FEDRAD_CONCAT_INNER(a, b) a##b
#define FEDRAD_CONCAT(a, b) FEDRAD_CONCAT_INNER(a, b)
// `FEDRAD_ASSIGN_OR_RETURN(auto x, f());` declares x from a StatusOr or returns its error.
#define FEDRAD_ASSIGN_OR_RETURN(lhs, expr) \
  FEDRAD_ASSIGN_OR_RETURN_IMPL(FEDRAD_CONCAT(_status_or_, __LINE__), lhs, expr)
#define FEDRAD_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(tmp).value()
