/* LD_PRELOAD shim (reference runs only): TCP_NODELAY on every TCP socket a process accepts
 * or connects. Garage v2.0.0 sets it nowhere (S3 API nor RPC), so on loopback a small
 * request/response can wait ~40 ms for a delayed ACK; bench/store/run.sh loads this into the
 * garage servers only when GARAGE_NODELAY=1, to show how much of Garage's figure that is.
 *   cc -O2 -shared -fPIC -o nodelay.so bench/store/nodelay.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

static void nodelay(int fd) {
  int one = 1, type = 0;
  socklen_t len = sizeof type;
  struct sockaddr_storage a;
  socklen_t alen = sizeof a;
  if (fd < 0 || getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM)
    return;
  if (getsockname(fd, (struct sockaddr *)&a, &alen) != 0 ||
      (a.ss_family != AF_INET && a.ss_family != AF_INET6))
    return;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int accept(int fd, struct sockaddr *addr, socklen_t *len) {
  static int (*real)(int, struct sockaddr *, socklen_t *);
  if (!real) real = dlsym(RTLD_NEXT, "accept");
  int r = real(fd, addr, len);
  nodelay(r);
  return r;
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
  static int (*real)(int, struct sockaddr *, socklen_t *, int);
  if (!real) real = dlsym(RTLD_NEXT, "accept4");
  int r = real(fd, addr, len, flags);
  nodelay(r);
  return r;
}

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
  static int (*real)(int, const struct sockaddr *, socklen_t);
  if (!real) real = dlsym(RTLD_NEXT, "connect");
  if (addr && (addr->sa_family == AF_INET || addr->sa_family == AF_INET6)) {
    int one = 1, type = 0;
    socklen_t tl = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) == 0 && type == SOCK_STREAM)
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  return real(fd, addr, len);
}
