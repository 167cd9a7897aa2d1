/* Batched UDP I/O for the DNS sockets: recvmmsg(2) and sendmmsg(2), with raw addresses.
 *
 * Optional (built by `make compile`); agent/dns/udp_batch.py uses socket.recvfrom and
 * sendto when it is absent. Why C: per cached answer, CPython's recvfrom and sendto spent
 * about 3,200 of 12,200 user-space instructions turning the client's address into a
 * (str, int) tuple and back (inet_ntop's sprintf, tuple parsing), and each datagram cost
 * two system calls. Here a burst of datagrams is one call each way, and the address stays
 * the kernel's bytes, which Python only uses as a dict key and to send the reply.
 *
 * This code reads no DNS: it copies datagrams into bytes objects and back, with their
 * lengths from the kernel, bounded by the buffers it owns.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#define MAX_BATCH 64      /* datagrams per system call */
#define MAX_DATAGRAM 65535

static int as_int(PyObject *obj, int low, int high, const char *what, int *out)
{
    long value = PyLong_AsLong(obj);
    if (value == -1 && PyErr_Occurred())
        return -1;
    if (value < low || value > high) {
        PyErr_Format(PyExc_ValueError, "%s out of range: %ld", what, value);
        return -1;
    }
    *out = (int)value;
    return 0;
}

/* The host part of a sockaddr: 4 bytes (IPv4), or 16 address bytes and the 4-byte scope id
 * (IPv6), as a dict key for the client's address text. */
static PyObject *host_key(const struct sockaddr_storage *addr, socklen_t len)
{
    if (addr->ss_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *in4 = (const struct sockaddr_in *)addr;
        return PyBytes_FromStringAndSize((const char *)&in4->sin_addr, 4);
    }
    if (addr->ss_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
        char key[20];
        memcpy(key, &in6->sin6_addr, 16);
        memcpy(key + 16, &in6->sin6_scope_id, 4);
        return PyBytes_FromStringAndSize(key, 20);
    }
    return PyBytes_FromStringAndSize(NULL, 0); /* another family: no key */
}

PyDoc_STRVAR(recv_batch_doc,
"recv_batch(fd, buffer, count, size) -> list\n\n"
"Read up to `count` waiting datagrams of at most `size` bytes each (longer ones are cut, as\n"
"recvfrom cuts them) without waiting, into `buffer` (a bytearray of at least count * size\n"
"bytes). Returns [data, address, host, ...], three bytes objects per datagram: the datagram,\n"
"the sender's raw sockaddr (for send_batch) and its host part (host_key); [] when none\n"
"waits. Raises OSError for other errors.");

static PyObject *recv_batch(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs)
{
    int fd, count, size;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "recv_batch(fd, buffer, count, size)");
        return NULL;
    }
    if (as_int(args[0], 0, INT_MAX, "fd", &fd) < 0 ||
        as_int(args[2], 1, MAX_BATCH, "count", &count) < 0 ||
        as_int(args[3], 1, MAX_DATAGRAM, "size", &size) < 0)
        return NULL;
    if (!PyByteArray_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "buffer must be a bytearray");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_WRITABLE) < 0)
        return NULL; /* while held, the bytearray cannot be resized */
    if (view.len < (Py_ssize_t)count * size) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "buffer smaller than count * size");
        return NULL;
    }
    struct mmsghdr msgs[MAX_BATCH];
    struct iovec iov[MAX_BATCH];
    struct sockaddr_storage addrs[MAX_BATCH];
    memset(msgs, 0, sizeof(msgs[0]) * count);
    for (int i = 0; i < count; i++) {
        iov[i].iov_base = (char *)view.buf + (size_t)i * size;
        iov[i].iov_len = (size_t)size;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &addrs[i];
        msgs[i].msg_hdr.msg_namelen = sizeof(addrs[i]);
    }
    int got, saved_errno;
    Py_BEGIN_ALLOW_THREADS
    do {
        got = recvmmsg(fd, msgs, (unsigned int)count, MSG_DONTWAIT, NULL);
    } while (got < 0 && errno == EINTR);
    saved_errno = errno;
    Py_END_ALLOW_THREADS
    if (got < 0) {
        PyBuffer_Release(&view);
        if (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK)
            return PyList_New(0);
        errno = saved_errno;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *result = PyList_New((Py_ssize_t)got * 3);
    if (result == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    for (int i = 0; i < got; i++) {
        size_t length = msgs[i].msg_len < (unsigned int)size ? msgs[i].msg_len : (size_t)size;
        socklen_t namelen = msgs[i].msg_hdr.msg_namelen;
        if (namelen > sizeof(addrs[i]))
            namelen = sizeof(addrs[i]);
        PyObject *data = PyBytes_FromStringAndSize(iov[i].iov_base, (Py_ssize_t)length);
        PyObject *address = PyBytes_FromStringAndSize((const char *)&addrs[i], namelen);
        PyObject *host = host_key(&addrs[i], namelen);
        if (data == NULL || address == NULL || host == NULL) {
            Py_XDECREF(data);
            Py_XDECREF(address);
            Py_XDECREF(host);
            Py_DECREF(result); /* the items set so far go with it; the rest are NULL */
            PyBuffer_Release(&view);
            return NULL;
        }
        PyList_SET_ITEM(result, 3 * i, data);
        PyList_SET_ITEM(result, 3 * i + 1, address);
        PyList_SET_ITEM(result, 3 * i + 2, host);
    }
    PyBuffer_Release(&view);
    return result;
}

PyDoc_STRVAR(send_batch_doc,
"send_batch(fd, items) -> int\n\n"
"Send the datagrams of `items` ([data, address, data, address, ...], bytes objects, each\n"
"address a raw sockaddr from recv_batch) without waiting, in as few system calls as the\n"
"kernel allows. A datagram the kernel refuses (a full buffer, an unreachable address) is\n"
"skipped; returns how many were.");

static PyObject *send_batch(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs)
{
    int fd;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "send_batch(fd, items)");
        return NULL;
    }
    if (as_int(args[0], 0, INT_MAX, "fd", &fd) < 0)
        return NULL;
    if (!PyList_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "items must be a list");
        return NULL;
    }
    PyObject *items = args[1];
    Py_ssize_t total = PyList_GET_SIZE(items);
    if (total % 2) {
        PyErr_SetString(PyExc_ValueError, "items must pair each datagram with an address");
        return NULL;
    }
    struct mmsghdr msgs[MAX_BATCH];
    struct iovec iov[MAX_BATCH];
    PyObject *held[2 * MAX_BATCH];
    long failures = 0;
    for (Py_ssize_t start = 0; start < total; start += 2 * MAX_BATCH) {
        int n = (int)((total - start) / 2 < MAX_BATCH ? (total - start) / 2 : MAX_BATCH);
        for (int i = 0; i < 2 * n; i += 2) { /* checked before anything is held */
            PyObject *data = PyList_GET_ITEM(items, start + i);
            PyObject *address = PyList_GET_ITEM(items, start + i + 1);
            if (!PyBytes_CheckExact(data) || !PyBytes_CheckExact(address) ||
                PyBytes_GET_SIZE(address) < (Py_ssize_t)sizeof(sa_family_t) ||
                PyBytes_GET_SIZE(address) > (Py_ssize_t)sizeof(struct sockaddr_storage)) {
                PyErr_SetString(PyExc_TypeError, "items must be bytes: datagram, sockaddr");
                return NULL;
            }
        }
        memset(msgs, 0, sizeof(msgs[0]) * n);
        for (int i = 0; i < n; i++) {
            PyObject *data = PyList_GET_ITEM(items, start + 2 * i);
            PyObject *address = PyList_GET_ITEM(items, start + 2 * i + 1);
            /* The list may change while the GIL is released: hold what is sent. */
            held[2 * i] = Py_NewRef(data);
            held[2 * i + 1] = Py_NewRef(address);
            iov[i].iov_base = PyBytes_AS_STRING(data);
            iov[i].iov_len = (size_t)PyBytes_GET_SIZE(data);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = PyBytes_AS_STRING(address);
            msgs[i].msg_hdr.msg_namelen = (socklen_t)PyBytes_GET_SIZE(address);
        }
        Py_BEGIN_ALLOW_THREADS
        int done = 0;
        while (done < n) {
            int sent = sendmmsg(fd, msgs + done, (unsigned int)(n - done), MSG_DONTWAIT);
            if (sent < 0) {
                if (errno == EINTR)
                    continue;
                failures++; /* this datagram: refused; go on with the next */
                done++;
            } else {
                done += sent;
            }
        }
        Py_END_ALLOW_THREADS
        for (int i = 0; i < 2 * n; i++)
            Py_DECREF(held[i]);
    }
    return PyLong_FromLong(failures);
}

static PyMethodDef methods[] = {
    {"recv_batch", (PyCFunction)(void (*)(void))recv_batch, METH_FASTCALL, recv_batch_doc},
    {"send_batch", (PyCFunction)(void (*)(void))send_batch, METH_FASTCALL, send_batch_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_udpio", "Batched UDP I/O (recvmmsg, sendmmsg).", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__udpio(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "MAX_BATCH", MAX_BATCH) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
