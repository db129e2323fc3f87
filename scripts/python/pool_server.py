# The article's first server, as written: multiprocessing.Pool(processes=16)
# + apply_async, loguru debug logging. Only changes: the port (argv[1], else
# $PORT, else 6001 as in the article) and the bind host ($HOST, else 0.0.0.0
# as in the article) are configurable, so the compare script can run it on a
# free port on 127.0.0.1. Run it with the venv that scripts/python/setup.sh
# makes (it has loguru).
import os
import socket
import sys
import time
import threading
from loguru import logger
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures._base import Future
import multiprocessing

default_encoding: str = 'utf-8'

pool = ThreadPoolExecutor(
    max_workers=20,
    thread_name_prefix='simple-work-thread-pool'
)


def init_serversocket() -> socket.socket:
    serversocket = socket.socket(
        family=socket.AF_INET,
        type=socket.SOCK_STREAM
    )

    # 获取本地主机名
    host = socket.gethostname()
    logger.debug(f'host {host}')

    port = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get('PORT', 6001))

    # 绑定端口号
    serversocket.bind((os.environ.get('HOST', '0.0.0.0'), port))

    # 设置最大连接数,超过后排队
    serversocket.listen(2048)

    return serversocket


def send_response(clientsocket: socket.socket, addr: tuple, response_body: bytes) -> int:
    send_len: int = clientsocket.send(response_body)
    clientsocket.close()
    return send_len


def start_request(clientsocket: socket.socket, addr: tuple) -> int:
    try:
        pid = os.getpid()
        logger.debug(f'pid: {pid}, get message from {addr}')
        request_body: bytes = clientsocket.recv(2048)
        request_text: str = request_body.decode(encoding=default_encoding)
        response_text: str = f'server get message: {request_text}'
        response_body: bytes = response_text.encode(default_encoding)
        # time.sleep(1)
        send_len = send_response(
            clientsocket=clientsocket, addr=addr, response_body=response_body)
        logger.debug(f'发送了响应')
        return send_len
    except Exception as error:
        logger.exception(error)


def start_request_callback(future: Future) -> None:
    send_len: int = future.result()
    logger.debug(
        f'{threading.current_thread().name}, send payload len is {send_len}')


if __name__ == "__main__":
    serversocket = init_serversocket()

    pool = multiprocessing.Pool(processes=16)

    while True:
        clientsocket, addr = serversocket.accept()
        clientsocket: socket.socket
        addr: tuple

        # future: Future = pool.submit(start_request, clientsocket, addr)
        # future.add_done_callback(start_request_callback)
        pool.apply_async(start_request, (clientsocket, addr))

    pool.close()
    pool.join()
