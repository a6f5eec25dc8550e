#!/usr/bin/env python3
"""A TCP delay line on loopback: every byte reaches the other side DELAY_MS later, each way,
with no limit on throughput, so a local registry answers as a distant one does (a round trip
of twice DELAY_MS). `bench/push.py --delay-ms N` puts it in front of its registry.

    bench/delay_proxy.py LISTEN_PORT TARGET_PORT DELAY_MS
"""
import asyncio, sys
listen, target, delay = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) / 1000

async def pump(reader, writer):
    """Copy reader to writer, each chunk sent DELAY after it arrived, in order."""
    loop = asyncio.get_running_loop()
    q = asyncio.Queue()
    async def sender():
        while True:
            due, data = await q.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                try: writer.close()
                except Exception: pass
                return
            writer.write(data)
            await writer.drain()
    task = asyncio.create_task(sender())
    try:
        while True:
            data = await reader.read(1 << 20)
            await q.put((loop.time() + delay, data or None))
            if not data:
                break
    except Exception:
        await q.put((loop.time(), None))
    await task

async def handle(cr, cw):
    tr, tw = await asyncio.open_connection("127.0.0.1", target)
    await asyncio.gather(pump(cr, tw), pump(tr, cw), return_exceptions=True)

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()
asyncio.run(main())
