/* The pod sandbox ("pause") image of the local e2e cluster: holds the pod's namespaces, reaps
 * zombies, and exits on SIGINT or SIGTERM. Built static by e2e/build-images.sh. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, 0, WNOHANG) > 0) {
    }
}

static void quit(int sig) {
    (void)sig;
    _exit(0);
}

int main(void) {
    signal(SIGINT, quit);
    signal(SIGTERM, quit);
    signal(SIGCHLD, reap);
    for (;;) {
        pause();
    }
}
