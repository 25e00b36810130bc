// edgecompile: the TCP helpers TVM's RPC sources include as "../../support/socket.h" (the wheel
// leaves it out): just what rpc_socket_impl.cc uses, POSIX only (the native runtime is built
// for Linux boards).
#ifndef TVM_SUPPORT_SOCKET_H_
#define TVM_SUPPORT_SOCKET_H_

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>
#include <tvm/ffi/error.h>

#include <cstring>
#include <string>

namespace tvm {
namespace support {

// An address resolved from a host name or literal and a port.
struct SockAddr {
  sockaddr_storage addr{};

  SockAddr() = default;
  SockAddr(const char* url, int port) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    std::string service = std::to_string(port);
    int code = getaddrinfo(url, service.c_str(), &hints, &found);
    if (code != 0 || found == nullptr) {
      TVM_FFI_THROW(InternalError) << "cannot resolve " << url << ": " << gai_strerror(code);
    }
    std::memcpy(&addr, found->ai_addr, found->ai_addrlen);
    freeaddrinfo(found);
  }

  int ss_family() const { return addr.ss_family; }

  socklen_t size() const {
    return addr.ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
  }

  std::string AsString() const {
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (addr.ss_family == AF_INET6) {
      auto* v6 = reinterpret_cast<const sockaddr_in6*>(&addr);
      inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof(host));
      port = ntohs(v6->sin6_port);
    } else {
      auto* v4 = reinterpret_cast<const sockaddr_in*>(&addr);
      inet_ntop(AF_INET, &v4->sin_addr, host, sizeof(host));
      port = ntohs(v4->sin_port);
    }
    return std::string(host) + ":" + std::to_string(port);
  }
};

class Socket {
 public:
  using SockType = int;
  static constexpr SockType kInvalid = -1;

  SockType sockfd = kInvalid;

  // A failed socket call: an error the RPC endpoint reports to its caller.
  [[noreturn]] static void Error(const char* what) {
    TVM_FFI_THROW(InternalError) << "Socket " << what << " error: " << std::strerror(errno);
  }

  bool BadSocket() const { return sockfd == kInvalid; }

  void Close() {
    if (sockfd != kInvalid) {
      close(sockfd);
      sockfd = kInvalid;
    }
  }

 protected:
  explicit Socket(SockType fd) : sockfd(fd) {}
};

class TCPSocket : public Socket {
 public:
  TCPSocket() : Socket(kInvalid) {}
  explicit TCPSocket(SockType fd) : Socket(fd) {}

  void Create(int family = AF_INET) {
    sockfd = socket(family, SOCK_STREAM, 0);
    if (sockfd == kInvalid) Error("Create");
  }

  bool Connect(const SockAddr& address) {
    return connect(sockfd, reinterpret_cast<const sockaddr*>(&address.addr), address.size()) == 0;
  }

  // One send; MSG_NOSIGNAL: a peer gone away is an error here, not a SIGPIPE killing the server.
  ssize_t Send(const void* data, size_t size) {
    ssize_t n;
    do {
      n = send(sockfd, data, size, MSG_NOSIGNAL);
    } while (n == -1 && errno == EINTR);
    return n;
  }

  ssize_t Recv(void* data, size_t size) {
    ssize_t n;
    do {
      n = recv(sockfd, data, size, 0);
    } while (n == -1 && errno == EINTR);
    return n;
  }

  size_t SendAll(const void* data, size_t size) {
    size_t done = 0;
    while (done < size) {
      ssize_t n = Send(static_cast<const char*>(data) + done, size - done);
      if (n == -1) Error("SendAll");
      done += static_cast<size_t>(n);
    }
    return done;
  }

  size_t RecvAll(void* data, size_t size) {
    size_t done = 0;
    while (done < size) {
      ssize_t n = Recv(static_cast<char*>(data) + done, size - done);
      if (n == -1) Error("RecvAll");
      if (n == 0) break;
      done += static_cast<size_t>(n);
    }
    return done;
  }
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_SOCKET_H_
