import os, socket, threading
def miss(i):
    try: open(f"/home/cell/.config/thread{i}.json")
    except OSError: pass
ts = [threading.Thread(target=miss, args=(i,)) for i in range(3)]
[t.start() for t in ts]; [t.join() for t in ts]
for _ in range(3):
    try: open("/home/cell/.config/foo.json")
    except OSError: pass
try: open("/etc/nixcell-test", "w")
except OSError: pass
d = b"/tmp/a\nb\x1b[31m\xff\xe2\x80\xae<x>"
os.mkdir(d); os.chdir(d)
for name in (b"rel", b"sub/x"):
    try: open(name)
    except OSError: pass
try: os.mkdir(b"q/r")
except OSError: pass
s = socket.socket()
try: s.connect(("127.0.0.1", 1))
except OSError: pass
if os.fork() == 0:
    try: open("/nix/store/00000000000000000000000000000000-not-in-closure/x")
    except OSError: pass
    os._exit(0)
os.wait()
try: os.rename("/tmp/x-missing", "/etc/y")
except OSError: pass
