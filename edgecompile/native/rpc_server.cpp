// edgecompile-rpc-server: TVM's RPC server for a board without Python.
//
//   edgecompile-rpc-server [--port N] [--work-dir DIR] [--key KEY]
//
// What `python -m tvm.exec.rpc_server --host 127.0.0.1` does, on the native runtime alone, so
// `edgecompile tune --device` measures candidates on a board with no TVM Python (a 32-bit one
// included). It listens on 127.0.0.1 only -- TVM RPC has no authentication, so the one way in
// is the SSH tunnel edgecompile opens -- on port N (0: a free one), answers TVM's handshake,
// and serves each session in a child process of its own, one session at a time as TVM's server
// does: a candidate that crashes ends its session, not the server. Uploaded libraries go to a
// folder per session under the work dir (by default a temporary one), removed when the session
// ends; the work dir it made itself is removed at exit. SIGTERM, SIGINT or SIGHUP end it
// cleanly: the session running is stopped, its files removed, exit 0.
//
// Printed once listening, on stdout: "edgecompile-rpc-server: listening on 127.0.0.1:PORT, work
// dir DIR". Errors: one line on stderr, exit 2 (usage) or 1 (could not serve).
//
// The RPC protocol, the remote module and time evaluator and the upload/download/remove
// functions are TVM's own (src/runtime/rpc in the runtime library); this program adds what
// TVM's Python server registers in Python: the work path, load_module, and MetaSchedule's
// random_fill_for_measure. Like edgecompile-runner it reaches the runtime only through
// TVM-FFI's C ABI (CallExpected, functions it registers catch their own errors): the runtime
// carries its own libc++, whose exceptions this program cannot catch.
// 64-bit file offsets and inode numbers on 32-bit ARM too: else lstat/readdir fail (EOVERFLOW)
// on a filesystem with large inode numbers, and a session's files would be left behind.
#define _FILE_OFFSET_BITS 64

#include <dirent.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/optional.h>
#include <tvm/ffi/string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "program_main.h"

namespace ffi = tvm::ffi;

namespace {

// TVM's RPC handshake codes (python/tvm/rpc/base.py).
constexpr int32_t kRPCMagic = 0xff271;
constexpr int32_t kRPCCodeSuccess = kRPCMagic + 0;
constexpr int32_t kRPCCodeMismatch = kRPCMagic + 2;
// The board's triple, as TVM's LLVM on the board would name it: this program runs only on the
// architecture it was built for.
#if defined(__aarch64__)
constexpr const char* kSystemTriple = "aarch64-unknown-linux-gnu";
#elif defined(__arm__)
constexpr const char* kSystemTriple = "armv7l-unknown-linux-gnueabihf";
#elif defined(__x86_64__)
constexpr const char* kSystemTriple = "x86_64-unknown-linux-gnu";
#else
constexpr const char* kSystemTriple = "unknown";
#endif
// A client's key is "client:KEY" plus options; more than this is not a TVM client.
constexpr int32_t kMaxKeyBytes = 4096;
// A connection that has not finished its handshake within this many ms is dropped, so a
// stray connection cannot hold the (serial) server.
constexpr int kHandshakeTimeoutMs = 10000;

using edgecompile::UsageError;  // exit 2, where any other error exits 1

struct Options {
  int port = 9090;
  std::string work_dir;  // empty: a temporary folder of our own
  std::string key;
};

int ParsePort(const std::string& text) {
  char* end = nullptr;
  long value = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || value < 0 || value > 65535) {
    throw UsageError("--port must be a port number 0-65535 (0: a free one), got '" + text + "'");
  }
  return static_cast<int>(value);
}

Options ParseOptions(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--port") {
      options.port = ParsePort(value());
    } else if (arg == "--work-dir") {
      options.work_dir = value();
      if (options.work_dir.empty()) throw UsageError("--work-dir needs a folder");
    } else if (arg == "--key") {
      options.key = value();
      if (options.key.find_first_of(" \t\n") != std::string::npos) {
        throw UsageError("--key must not contain spaces");
      }
    } else if (arg == "-h" || arg == "--help") {
      std::printf(
          "usage: edgecompile-rpc-server [--port N] [--work-dir DIR] [--key KEY]\n"
          "TVM RPC server on 127.0.0.1:N (default 9090; 0: a free port) for boards without "
          "Python.\n");
      std::exit(0);
    } else {
      throw UsageError("unknown argument '" + arg + "' (try --help)");
    }
  }
  return options;
}

// --- stopping -----------------------------------------------------------------------------------

volatile sig_atomic_t g_stop_signal = 0;

void OnStopSignal(int signal_number) { g_stop_signal = signal_number; }

// SIGTERM/SIGINT/SIGHUP set a flag the loops poll (no SA_RESTART: a blocked wait returns EINTR).
void CatchStopSignals() {
  struct sigaction action {};
  action.sa_handler = OnStopSignal;
  sigemptyset(&action.sa_mask);
  for (int signal_number : {SIGTERM, SIGINT, SIGHUP}) sigaction(signal_number, &action, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a client gone away is an error on its socket, not our death
}

void RestoreDefaultSignals() {
  for (int signal_number : {SIGTERM, SIGINT, SIGHUP, SIGPIPE}) signal(signal_number, SIG_DFL);
}

// --- files --------------------------------------------------------------------------------------

void RemoveTree(const std::string& path) {
  struct stat info {};
  if (lstat(path.c_str(), &info) != 0) return;
  if (S_ISDIR(info.st_mode)) {
    if (DIR* dir = opendir(path.c_str())) {
      while (dirent* entry = readdir(dir)) {
        std::string name = entry->d_name;
        if (name != "." && name != "..") RemoveTree(path + "/" + name);
      }
      closedir(dir);
    }
    rmdir(path.c_str());
  } else {
    unlink(path.c_str());
  }
}

// --- what TVM's Python server registers in Python -----------------------------------------------

// The session's folder: every path a client names is relative to it.
std::string g_session_dir;

ffi::Function Global(const char* name) {
  ffi::Optional<ffi::Function> function = ffi::Function::GetGlobal(name);
  if (!function.has_value()) {
    throw std::runtime_error(std::string("the native runtime lacks ") + name +
                             "; rebuild it with this edgecompile");
  }
  return *function;
}

ffi::Any Call(const ffi::Function& function, ffi::AnyView argument) {
  ffi::Expected<ffi::Any> result = function.CallExpected<ffi::Any>(argument);
  if (result.is_err()) throw result.error();
  return result.value();
}

// Uniform values for a tensor MetaSchedule times a candidate on: their values do not matter,
// only that floats are ordinary numbers (no NaN, no subnormals) and integers small.
void RandomFill(DLTensor* tensor) {
  if (tensor->device.device_type != kDLCPU) {
    TVM_FFI_THROW(ValueError) << "random_fill_for_measure: only CPU tensors";
  }
  size_t count = 1;
  for (int i = 0; i < tensor->ndim; ++i) count *= static_cast<size_t>(tensor->shape[i]);
  count *= tensor->dtype.lanes;
  char* data = static_cast<char*>(tensor->data) + tensor->byte_offset;
  std::mt19937 generator(20240611u);
  std::uniform_real_distribution<float> real(-1.0f, 1.0f);
  std::uniform_int_distribution<int> small(0, 3);
  const DLDataType dtype = tensor->dtype;
  for (size_t i = 0; i < count; ++i) {
    if (dtype.code == kDLFloat && dtype.bits == 32) {
      reinterpret_cast<float*>(data)[i] = real(generator);
    } else if (dtype.code == kDLFloat && dtype.bits == 64) {
      reinterpret_cast<double*>(data)[i] = real(generator);
    } else if ((dtype.code == kDLFloat || dtype.code == kDLBfloat) && dtype.bits == 16) {
      // +-0.5 .. +-1.0 in both float16 (0x3800..0x3c00) and bfloat16 (0x3f00..0x3f80) spirit:
      // a normal number either way.
      uint16_t bits = dtype.code == kDLFloat ? 0x3800 : 0x3f00;
      reinterpret_cast<uint16_t*>(data)[i] = static_cast<uint16_t>(bits + small(generator));
    } else if ((dtype.code == kDLInt || dtype.code == kDLUInt) && dtype.bits % 8 == 0 &&
               dtype.bits <= 64) {
      size_t bytes = dtype.bits / 8;
      std::memset(data + i * bytes, 0, bytes);
      data[i * bytes] = static_cast<char>(small(generator));  // little-endian boards
    } else if (dtype.code == kDLBool || (dtype.code == kDLUInt && dtype.bits == 1)) {
      data[i] = static_cast<char>(small(generator) & 1);
    } else {
      TVM_FFI_THROW(ValueError) << "random_fill_for_measure: unsupported dtype code "
                                << static_cast<int>(dtype.code) << " bits "
                                << static_cast<int>(dtype.bits);
    }
  }
}

void RegisterServerFunctions() {
  ffi::Function::SetGlobal(
      "tvm.rpc.server.workpath",
      ffi::Function::FromTyped([](ffi::String name) -> ffi::String {
        return ffi::String(g_session_dir + "/" + std::string(name));
      }),
      true);
  ffi::Function load = Global("ffi.ModuleLoadFromFile");
  ffi::Function::SetGlobal(
      "tvm.rpc.server.load_module",
      ffi::Function::FromPacked([load](ffi::PackedArgs args, ffi::Any* result) {
        std::string path = g_session_dir + "/" + std::string(args[0].cast<ffi::String>());
        *result = Call(load, ffi::String(path));
      }),
      true);
  ffi::Function::SetGlobal(
      "tvm.rpc.server.listdir",
      ffi::Function::FromTyped([](ffi::String name) -> ffi::String {
        std::string folder = g_session_dir + "/" + std::string(name);
        std::string listed;
        if (DIR* dir = opendir(folder.c_str())) {
          while (dirent* entry = readdir(dir)) {
            std::string item = entry->d_name;
            if (item == "." || item == "..") continue;
            listed += (listed.empty() ? "" : ",") + folder + "/" + item;
          }
          closedir(dir);
        }
        return ffi::String(listed);
      }),
      true);
  ffi::Function::SetGlobal(
      "tvm.contrib.random.random_fill_for_measure",
      ffi::Function::FromPacked([](ffi::PackedArgs args, ffi::Any*) {
        RandomFill(args[0].cast<DLTensor*>());
      }),
      true);
  // `tune` asks a board for its system triple (TVM's LLVM answers on a board with Python) to
  // refuse a board of the wrong architecture before measuring anything.
  ffi::Function::SetGlobal(
      "target.llvm_get_system_triple",
      ffi::Function::FromTyped([]() -> ffi::String { return ffi::String(kSystemTriple); }), true);
}

// --- the handshake ------------------------------------------------------------------------------

bool WaitReadable(int fd, int timeout_ms) {
  pollfd entry{fd, POLLIN, 0};
  int n;
  do {
    n = poll(&entry, 1, timeout_ms);
  } while (n == -1 && errno == EINTR && g_stop_signal == 0);
  return n == 1;
}

bool RecvAll(int fd, void* data, size_t size) {
  char* at = static_cast<char*>(data);
  while (size > 0) {
    if (!WaitReadable(fd, kHandshakeTimeoutMs)) return false;
    ssize_t n = recv(fd, at, size, 0);
    if (n <= 0) return false;
    at += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

bool SendAll(int fd, const void* data, size_t size) {
  const char* at = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = send(fd, at, size, MSG_NOSIGNAL);
    if (n == -1 && errno == EINTR) continue;
    if (n <= 0) return false;
    at += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

// TVM's server handshake: [magic, key length, "client:KEY [-timeout=S]"] in, [magic, key
// length, "server:KEY"] out. Returns the session timeout in seconds (0: none), or -1 when the
// peer is not a TVM client with our key (the connection is then closed).
double Handshake(int fd, const std::string& key) {
  int32_t magic = 0, length = 0;
  if (!RecvAll(fd, &magic, sizeof(magic)) || magic != kRPCMagic) return -1;
  if (!RecvAll(fd, &length, sizeof(length)) || length < 0 || length > kMaxKeyBytes) return -1;
  std::string sent(static_cast<size_t>(length), '\0');
  if (length > 0 && !RecvAll(fd, &sent[0], sent.size())) return -1;
  std::vector<std::string> words;
  size_t start = 0;
  while (start < sent.size()) {
    size_t space = sent.find_first_of(" \t", start);
    if (space == std::string::npos) space = sent.size();
    if (space > start) words.push_back(sent.substr(start, space - start));
    start = space + 1;
  }
  if (words.empty() || words[0] != "client:" + key) {
    int32_t code = kRPCCodeMismatch;
    SendAll(fd, &code, sizeof(code));
    return -1;
  }
  double timeout = 0;
  for (size_t i = 1; i < words.size(); ++i) {
    if (words[i].rfind("-timeout=", 0) == 0) timeout = std::atof(words[i].c_str() + 9);
  }
  std::string server_key = "server:" + key;
  int32_t code = kRPCCodeSuccess;
  int32_t server_length = static_cast<int32_t>(server_key.size());
  if (!SendAll(fd, &code, sizeof(code)) || !SendAll(fd, &server_length, sizeof(server_length)) ||
      !SendAll(fd, server_key.data(), server_key.size())) {
    return -1;
  }
  return timeout > 0 ? timeout : 0;
}

// --- serving ------------------------------------------------------------------------------------

// The child: TVM's server loop on the connection, in the session's folder.
[[noreturn]] void ServeSession(int connection, const std::string& folder) {
  RestoreDefaultSignals();
  g_session_dir = folder;
  if (chdir(folder.c_str()) != 0) _exit(1);
  int exit_code = 0;
  try {
    Call(Global("rpc.ServerLoop"), static_cast<int64_t>(connection));
  } catch (const ffi::Error& error) {
    // A client that went away mid-request ends up here too: worth a line in the log only.
    std::fprintf(stderr, "edgecompile-rpc-server: session ended: %s: %s\n",
                 std::string(error.kind()).c_str(), std::string(error.message()).c_str());
    exit_code = 1;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "edgecompile-rpc-server: session ended: %s\n", error.what());
    exit_code = 1;
  }
  std::fflush(stderr);
  _exit(exit_code);
}

void StopChild(pid_t child) {
  kill(child, SIGTERM);
  for (int i = 0; i < 40; ++i) {  // 2 s to go, then killed
    if (waitpid(child, nullptr, WNOHANG) == child) return;
    usleep(50000);
  }
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
}

// Waits for the session's child; a session over its timeout is told so (as TVM's server does)
// and stopped, and so is one running when we are asked to stop.
void AwaitSession(pid_t child, int connection, double timeout_seconds) {
  auto started = std::chrono::steady_clock::now();
  while (true) {
    pid_t done = waitpid(child, nullptr, WNOHANG);
    if (done == child || (done == -1 && errno == ECHILD)) return;
    if (g_stop_signal != 0) {
      StopChild(child);
      return;
    }
    std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - started;
    if (timeout_seconds > 0 && elapsed.count() > timeout_seconds) {
      if (auto notify = ffi::Function::GetGlobal("rpc.ReturnException")) {
        std::string message = "RPCSessionTimeoutError: Your " + std::to_string(timeout_seconds) +
                              "s session has expired, try to increase the \"session_timeout\" "
                              "value.";
        (void)notify->CallExpected<ffi::Any>(connection, ffi::String(message));
      }
      StopChild(child);
      std::fprintf(stderr, "edgecompile-rpc-server: session timed out after %.0f s\n",
                   timeout_seconds);
      return;
    }
    usleep(20000);
  }
}

int Listen(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
  int yes = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);  // loopback only: the tunnel is the way in
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      listen(fd, 8) != 0) {
    std::string reason = std::strerror(errno);
    close(fd);
    throw std::runtime_error("cannot listen on 127.0.0.1:" + std::to_string(port) + ": " +
                             reason);
  }
  return fd;
}

int BoundPort(int fd) {
  sockaddr_in address{};
  socklen_t size = sizeof(address);
  getsockname(fd, reinterpret_cast<sockaddr*>(&address), &size);
  return ntohs(address.sin_port);
}

std::string MakeWorkDir(const std::string& given, bool* made) {
  *made = given.empty();
  if (!given.empty()) {
    if (mkdir(given.c_str(), 0700) != 0 && errno != EEXIST) {
      throw UsageError("cannot create --work-dir " + given + ": " + std::strerror(errno));
    }
    return given;
  }
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/edgecompile-rpc-XXXXXX";
  std::vector<char> buffer(pattern.begin(), pattern.end());
  buffer.push_back('\0');
  if (mkdtemp(buffer.data()) == nullptr) {
    throw std::runtime_error("cannot create a work dir in " + pattern + ": " +
                             std::strerror(errno));
  }
  return buffer.data();
}

int Run(const Options& options) {
  CatchStopSignals();
  RegisterServerFunctions();
  Global("rpc.ServerLoop");  // a runtime built without RPC fails here, before listening
  int listener = Listen(options.port);
  bool made_work_dir = false;
  std::string work_dir = MakeWorkDir(options.work_dir, &made_work_dir);
  std::printf("edgecompile-rpc-server: listening on 127.0.0.1:%d, work dir %s\n",
              BoundPort(listener), work_dir.c_str());
  std::fflush(stdout);
  unsigned sessions = 0;
  while (g_stop_signal == 0) {
    if (!WaitReadable(listener, 500)) continue;
    int connection = accept(listener, nullptr, nullptr);
    if (connection < 0) continue;
    double timeout = Handshake(connection, options.key);
    if (timeout < 0 || g_stop_signal != 0) {
      close(connection);
      continue;
    }
    int yes = 1;
    setsockopt(connection, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof(yes));
    std::string folder = work_dir + "/session-" + std::to_string(++sessions);
    if (mkdir(folder.c_str(), 0700) != 0) {
      std::fprintf(stderr, "edgecompile-rpc-server: cannot create %s: %s\n", folder.c_str(),
                   std::strerror(errno));
      close(connection);
      continue;
    }
    std::fflush(stdout);
    std::fflush(stderr);
    pid_t child = fork();
    if (child == 0) {
      close(listener);
      ServeSession(connection, folder);
    }
    if (child < 0) {
      std::fprintf(stderr, "edgecompile-rpc-server: fork: %s\n", std::strerror(errno));
    } else {
      AwaitSession(child, connection, timeout);
    }
    close(connection);
    RemoveTree(folder);
  }
  close(listener);
  if (made_work_dir) RemoveTree(work_dir);
  std::fprintf(stderr, "edgecompile-rpc-server: stopped (signal %d)\n",
               static_cast<int>(g_stop_signal));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return edgecompile::GuardedMain("edgecompile-rpc-server",
                                  [&] { return Run(ParseOptions(argc, argv)); });
}
