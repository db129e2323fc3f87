#include <stdio.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(){
  int l=socket(AF_INET,SOCK_STREAM|SOCK_NONBLOCK,0);
  struct sockaddr_in a={.sin_family=AF_INET,.sin_addr.s_addr=htonl(0x7f000001)};
  bind(l,(void*)&a,sizeof a); listen(l,128);
  int N=200000; double t;
  for(int r=0;r<3;r++){
  t=now(); for(int i=0;i<N;i++) accept4(l,0,0,SOCK_NONBLOCK|SOCK_CLOEXEC); printf("failing accept4: %.3f us\n",(now()-t)/N*1e6);
  struct tcp_info ti; socklen_t len=sizeof ti;
  t=now(); for(int i=0;i<N;i++){len=sizeof ti; getsockopt(l,IPPROTO_TCP,TCP_INFO,&ti,&len);} printf("getsockopt TCP_INFO: %.3f us (unacked %u)\n",(now()-t)/N*1e6, ti.tcpi_unacked);
  struct pollfd p={.fd=l,.events=POLLIN};
  t=now(); for(int i=0;i<N;i++) poll(&p,1,0); printf("poll 0: %.3f us\n",(now()-t)/N*1e6);
  t=now(); for(int i=0;i<N;i++) getppid(); printf("getppid: %.3f us\n",(now()-t)/N*1e6);
  }
}
