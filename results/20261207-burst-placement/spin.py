import os, time, sys
cpu = int(sys.argv[1]); os.sched_setaffinity(0, {cpu})
res = []
for i in range(40):
    t = time.thread_time_ns()
    for _ in range(20000): os.getppid()
    a = time.thread_time_ns() - t
    t = time.thread_time_ns(); x = 0
    for k in range(200000): x += k * k
    b = time.thread_time_ns() - t
    res.append((a / 20000, b / 1e6)); time.sleep(0.05)
print(" ".join(f"{a:.0f}" for a, b in res))
print(" ".join(f"{b:.1f}" for a, b in res))
