/* nixcell microVM guest relay: the cell's proxy address inside the guest, every connection
 * multiplexed over one virtio serial port (fd 8) to the host, which connects each stream to the
 * engine's proxy listener (microvmnet.py). Frames: u32 stream id, u8 type, u8 0, u16 length
 * (network order), then the data. Types: 1 open, 2 data, 3 eof (no more data this way),
 * 4 close. Runs as nobody in the guest; built statically by nixcell (gcc -static).
 * Usage: relay ADDRESS PORT */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define PORT_FD 8
#define MAXC 256
#define CHUNK 16384
enum { OPEN = 1, DATA = 2, END = 3, CLOSE = 4 };

static int fds[MAXC];
static uint32_t ids[MAXC];
static int reading[MAXC], hostend[MAXC];
static unsigned char in[CHUNK + 8];
static size_t have;

static void put(const unsigned char *p, size_t n) {
    while (n) {
        ssize_t w = write(PORT_FD, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) _exit(1);
        p += w; n -= (size_t)w;
    }
}

static void frame(uint32_t id, int type, const void *data, size_t len) {
    unsigned char h[8];
    uint32_t nid = htonl(id);
    uint16_t nlen = htons((uint16_t)len);
    memcpy(h, &nid, 4); h[4] = (unsigned char)type; h[5] = 0; memcpy(h + 6, &nlen, 2);
    put(h, 8);
    if (len) put(data, len);
}

static int slot(uint32_t id) {
    for (int i = 0; i < MAXC; i++) if (fds[i] >= 0 && ids[i] == id) return i;
    return -1;
}

static void drop(int i) { close(fds[i]); fds[i] = -1; }

static void deliver(uint32_t id, int type, const unsigned char *p, size_t len) {
    int i = slot(id);
    if (i < 0) return;
    if (type == DATA) {
        while (len) {
            ssize_t w = send(fds[i], p, len, MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) { frame(id, CLOSE, 0, 0); drop(i); return; }
            p += w; len -= (size_t)w;
        }
    } else if (type == END) {
        shutdown(fds[i], SHUT_WR);
        hostend[i] = 1;
        if (!reading[i]) drop(i);
    } else if (type == CLOSE) {
        drop(i);
    }
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &a.sin_addr) != 1) return 2;
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 128)) return 3;
    for (int i = 0; i < MAXC; i++) fds[i] = -1;
    uint32_t next = 1;
    static unsigned char buf[CHUNK];
    for (;;) {
        struct pollfd p[MAXC + 2];
        int map[MAXC + 2], n = 0;
        p[n].fd = PORT_FD; p[n].events = POLLIN; map[n++] = -1;
        p[n].fd = ls; p[n].events = POLLIN; map[n++] = -2;
        for (int i = 0; i < MAXC; i++)
            if (fds[i] >= 0 && reading[i]) { p[n].fd = fds[i]; p[n].events = POLLIN; map[n++] = i; }
        if (poll(p, (nfds_t)n, -1) < 0) { if (errno == EINTR) continue; return 4; }
        if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t r = read(PORT_FD, in + have, sizeof in - have);
            if (r <= 0) { if (r < 0 && errno == EINTR) continue; return 0; }
            have += (size_t)r;
            while (have >= 8) {
                uint32_t id; uint16_t len;
                memcpy(&id, in, 4); memcpy(&len, in + 6, 2);
                id = ntohl(id); len = ntohs(len);
                if (len > CHUNK) return 5;
                if (have < 8u + len) break;
                deliver(id, in[4], in + 8, len);
                memmove(in, in + 8 + len, have - 8 - len);
                have -= 8u + len;
            }
        }
        if (p[1].revents & POLLIN) {
            int c = accept4(ls, 0, 0, SOCK_CLOEXEC), i;
            for (i = 0; c >= 0 && i < MAXC && fds[i] >= 0; i++) {}
            if (c >= 0 && i == MAXC) close(c);
            else if (c >= 0) { fds[i] = c; ids[i] = next++; reading[i] = 1; hostend[i] = 0; frame(ids[i], OPEN, 0, 0); }
        }
        for (int k = 2; k < n; k++) {
            int i = map[k];
            if (fds[i] < 0 || !(p[k].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            ssize_t r = recv(fds[i], buf, sizeof buf, 0);
            if (r > 0) frame(ids[i], DATA, buf, (size_t)r);
            else if (r == 0) { reading[i] = 0; frame(ids[i], END, 0, 0); if (hostend[i]) drop(i); }
            else if (errno != EINTR) { frame(ids[i], CLOSE, 0, 0); drop(i); }
        }
    }
}
