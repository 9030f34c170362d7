import trio, time
from dht import DhtNode, NodeConfig, StaticBootstrapper

async def main():
    async with trio.open_nursery() as n:
        nodes = []
        from contextlib import AsyncExitStack
        async with AsyncExitStack() as stack:
            first = await stack.enter_async_context(DhtNode.open(NodeConfig(bind_host="127.0.0.1", bind_port=0)))
            boot = StaticBootstrapper([f"127.0.0.1:{first.address[1]}"])
            nodes.append(first)
            for i in range(30):
                node = await stack.enter_async_context(DhtNode.open(NodeConfig(bind_host="127.0.0.1", bind_port=0), boot))
                nodes.append(node)
            with trio.fail_after(10):
                for node in nodes[1:]:
                    await node.wait_ready()
            await trio.sleep(1)
            print([len(x.routing) for x in nodes])
            await nodes[3].provide(["sha256:abc", "docker.io/library/nginx:latest"])
            t = time.perf_counter()
            got = [p async for p in nodes[10].get_providers("sha256:abc")]
            print(got, time.perf_counter() - t)
            print(nodes[3].address, nodes[10].stats)
        n.cancel_scope.cancel()
trio.run(main)
