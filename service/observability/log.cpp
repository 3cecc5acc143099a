#include "observability/log.hpp"

#include <unistd.h>

#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <nlohmann/json.hpp>

#include "observability/line_writer.hpp"

namespace tokend::log {
namespace {

constexpr auto kFlushInterval = std::chrono::milliseconds(100);

struct state {
  format fmt = format::json;
  level min = level::info;
  std::string base_fields = ",\"instance\":\"\",\"environment\":\"development\"";  // rendered once
  line_writer* writer = nullptr;  // leaked on purpose: lines logged during exit still work
};

state& global() {
  // Written once by init() before serving; read-only afterwards.
  static state s;
  return s;
}

std::string_view level_name(level l) {
  switch (l) {
    case level::trace:
      return "trace";
    case level::debug:
      return "debug";
    case level::info:
      return "info";
    case level::warn:
      return "warn";
    case level::error:
      return "error";
    case level::off:
      return "off";
  }
  return "info";
}

// "YYYY-MM-DDTHH:MM:SS.mmmZ"; the part up to the second is formatted once per second per thread.
void append_timestamp(std::string& out) {
  using namespace std::chrono;
  thread_local long long cached_sec = -1;
  thread_local char prefix[24];
  const auto now_ms = duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
  const long long sec = now_ms / 1000;
  if (sec != cached_sec) {
    const std::time_t t = static_cast<std::time_t>(sec);
    std::tm tm{};
    gmtime_r(&t, &tm);
    std::strftime(prefix, sizeof prefix, "%Y-%m-%dT%H:%M:%S.", &tm);  // 20 characters
    cached_sec = sec;
  }
  out.append(prefix, 20);
  const int ms = static_cast<int>(now_ms % 1000);
  out.push_back(static_cast<char>('0' + ms / 100));
  out.push_back(static_cast<char>('0' + ms / 10 % 10));
  out.push_back(static_cast<char>('0' + ms % 10));
  out.push_back('Z');
}

// The length of the valid UTF-8 sequence starting at s[i] (a lead byte >= 0x80), or 0.
std::size_t utf8_length(std::string_view s, std::size_t i) {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const auto cont = [&](std::size_t k) { return k < s.size() && (b(k) & 0xC0) == 0x80; };
  const unsigned char c = b(i);
  if (c >= 0xC2 && c <= 0xDF) return cont(i + 1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (!cont(i + 1) || !cont(i + 2)) return 0;
    if (c == 0xE0 && b(i + 1) < 0xA0) return 0;  // overlong
    if (c == 0xED && b(i + 1) > 0x9F) return 0;  // surrogates
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (!cont(i + 1) || !cont(i + 2) || !cont(i + 3)) return 0;
    if (c == 0xF0 && b(i + 1) < 0x90) return 0;  // overlong
    if (c == 0xF4 && b(i + 1) > 0x8F) return 0;  // above U+10FFFF
    return 4;
  }
  return 0;
}

bool plain(unsigned char c) { return c >= 0x20 && c < 0x80 && c != '"' && c != '\\'; }

void append_json_fields(std::string& out, const nlohmann::json& fields, format f);

void begin_line(std::string& out, level l, std::string_view msg, std::string_view request_id) {
  const auto& g = global();
  out.clear();
  if (g.fmt == format::json) {
    out.append("{\"ts\":\"");
    append_timestamp(out);
    out.append("\",\"level\":\"");
    out.append(level_name(l));
    out.append("\",\"msg\":");
    append_json_string(out, msg);
    out.append(g.base_fields);
    if (!request_id.empty()) {
      out.append(",\"request_id\":");
      append_json_string(out, request_id);
    }
  } else {
    append_timestamp(out);
    out.push_back(' ');
    out.append(level_name(l));
    out.push_back(' ');
    out.append(msg);
    if (!request_id.empty()) {
      out.append(" request_id=");
      out.append(request_id);
    }
  }
}

void end_line(std::string& out) {
  if (global().fmt == format::json) out.push_back('}');
}

void emit(level l, std::string_view line) {
  auto& g = global();
  if (g.writer) {
    g.writer->submit(line, l >= level::warn);
  } else {
    std::string one(line);
    one.push_back('\n');
    write_all(STDERR_FILENO, one);
  }
}

void append_key(std::string& out, std::string_view k) {
  if (global().fmt == format::json) {
    out.push_back(',');
    append_json_string(out, k);
    out.push_back(':');
  } else {
    out.push_back(' ');
    out.append(k);
    out.push_back('=');
  }
}

bool is_base_key(std::string_view k) {
  return k == "ts" || k == "level" || k == "msg" || k == "instance" || k == "environment" ||
         k == "request_id";
}

void append_json_fields(std::string& out, const nlohmann::json& fields, format f) {
  if (!fields.is_object()) return;
  for (auto it = fields.begin(); it != fields.end(); ++it) {
    if (f == format::json && is_base_key(it.key())) continue;
    append_key(out, it.key());
    if (it->is_string()) {
      const auto& v = it->get_ref<const std::string&>();
      if (f == format::json) {
        append_json_string(out, v);
      } else {
        out.append(v);
      }
    } else {
      out.append(it->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    }
  }
}

// This thread's line buffer; a record built while another is open on the thread uses its own.
thread_local std::string tl_buffer;
thread_local bool tl_busy = false;

}  // namespace

std::optional<level> parse_level(std::string_view s) {
  for (auto l : {level::trace, level::debug, level::info, level::warn, level::error, level::off}) {
    if (s == level_name(l)) return l;
  }
  return std::nullopt;
}

std::optional<format> parse_format(std::string_view s) {
  if (s == "json") return format::json;
  if (s == "text") return format::text;
  return std::nullopt;
}

void append_json_string(std::string& out, std::string_view s) {
  static constexpr char hex[] = "0123456789abcdef";
  out.push_back('"');
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (plain(c)) {
      std::size_t j = i + 1;
      while (j < s.size() && plain(static_cast<unsigned char>(s[j]))) ++j;
      out.append(s.data() + i, j - i);
      i = j;
      continue;
    }
    if (c < 0x80) {
      switch (c) {
        case '"':
          out.append("\\\"");
          break;
        case '\\':
          out.append("\\\\");
          break;
        case '\n':
          out.append("\\n");
          break;
        case '\r':
          out.append("\\r");
          break;
        case '\t':
          out.append("\\t");
          break;
        case '\b':
          out.append("\\b");
          break;
        case '\f':
          out.append("\\f");
          break;
        default:
          out.append("\\u00");
          out.push_back(hex[c >> 4]);
          out.push_back(hex[c & 0xF]);
      }
      ++i;
      continue;
    }
    if (const auto n = utf8_length(s, i)) {
      out.append(s.data() + i, n);
      i += n;
    } else {
      out.append("\xEF\xBF\xBD");  // U+FFFD for a byte that is not valid UTF-8
      ++i;
    }
  }
  out.push_back('"');
}

void init(format f, level min_level, std::string instance, std::string environment,
          std::size_t queue_lines) {
  auto& g = global();
  g.fmt = f;
  g.min = min_level;
  g.base_fields.clear();
  g.base_fields.append(",\"instance\":");
  append_json_string(g.base_fields, instance);
  g.base_fields.append(",\"environment\":");
  append_json_string(g.base_fields, environment);
  if (!g.writer) {
    g.writer = new line_writer(STDERR_FILENO, queue_lines, kFlushInterval);
    std::atexit([] { shutdown(); });
  }
}

void shutdown() {
  if (auto* w = global().writer) w->stop();
}

std::uint64_t dropped() {
  const auto* w = global().writer;
  return w ? w->dropped() : 0;
}

bool enabled(level l) { return l != level::off && l >= global().min; }

record::record(level l, std::string_view msg, std::string_view request_id) : level_(l) {
  if (!enabled(l)) return;
  if (!tl_busy) {
    tl_busy = true;
    buf_ = &tl_buffer;
  } else {
    buf_ = &own_;
  }
  begin_line(*buf_, l, msg, request_id);
}

record::~record() {
  if (!buf_) return;
  end_line(*buf_);
  emit(level_, *buf_);
  if (buf_ == &tl_buffer) {
    if (tl_buffer.capacity() > 64 * 1024) tl_buffer = std::string();  // one huge line: let go
    tl_busy = false;
  }
}

std::string record::take() {
  if (!buf_) return {};
  end_line(*buf_);
  std::string out = *buf_;
  if (buf_ == &tl_buffer) tl_busy = false;
  buf_ = nullptr;
  return out;
}

void record::key(std::string_view k) { append_key(*buf_, k); }

record& record::str(std::string_view k, std::string_view v) {
  if (!buf_) return *this;
  key(k);
  if (global().fmt == format::json) {
    append_json_string(*buf_, v);
  } else {
    buf_->append(v);
  }
  return *this;
}

record& record::str(std::string_view k, const std::optional<std::string>& v) {
  if (!v) return null(k);
  return str(k, std::string_view(*v));
}

record& record::integer(std::string_view k, long long v) {
  if (!buf_) return *this;
  key(k);
  char tmp[24];
  const auto r = std::to_chars(tmp, tmp + sizeof tmp, v);
  buf_->append(tmp, r.ptr);
  return *this;
}

record& record::unsigned_integer(std::string_view k, unsigned long long v) {
  if (!buf_) return *this;
  key(k);
  char tmp[24];
  const auto r = std::to_chars(tmp, tmp + sizeof tmp, v);
  buf_->append(tmp, r.ptr);
  return *this;
}

record& record::real(std::string_view k, double v) {
  if (!buf_) return *this;
  if (!std::isfinite(v)) return null(k);
  key(k);
  char tmp[32];
  const auto r = std::to_chars(tmp, tmp + sizeof tmp, v);
  buf_->append(tmp, r.ptr);
  return *this;
}

record& record::flag(std::string_view k, bool v) {
  if (!buf_) return *this;
  key(k);
  buf_->append(v ? "true" : "false");
  return *this;
}

record& record::null(std::string_view k) {
  if (!buf_) return *this;
  key(k);
  buf_->append("null");
  return *this;
}

record& record::raw(std::string_view k, std::string_view json_text) {
  if (!buf_) return *this;
  key(k);
  buf_->append(json_text);
  return *this;
}

std::string render(level l, std::string_view msg, const nlohmann::json& fields,
                   std::string_view request_id) {
  std::string out;
  begin_line(out, l, msg, request_id);
  append_json_fields(out, fields, global().fmt);
  end_line(out);
  return out;
}

void write(level l, std::string_view msg, const nlohmann::json& fields,
           std::string_view request_id) {
  if (!enabled(l)) return;
  emit(l, render(l, msg, fields, request_id));
}

void write(level l, std::string_view msg) { write(l, msg, nlohmann::json::object()); }

void announce(std::string_view msg, const nlohmann::json& fields) {
  if (global().min == level::off) return;
  emit(level::warn, render(level::info, msg, fields, {}));  // urgent: scripts wait for it
}

}  // namespace tokend::log
