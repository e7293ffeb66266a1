/* bulkhead-init: PID 1 for containers run with --init (as tini is for Docker's).
 *
 * A process that is PID 1 of a pid namespace gets no default signal actions and inherits every
 * orphan. This one starts the command, forwards to it every signal it receives, reaps every child
 * so that no zombie accumulates, and exits with the command's status (128 + signal if killed).
 * Static, so that it runs in any image. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "bulkhead-init: no command\n");
        return 127;
    }
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &old);
    pid_t child = fork();
    if (child < 0) {
        perror("bulkhead-init: fork");
        return 126;
    }
    if (child == 0) {
        sigprocmask(SIG_SETMASK, &old, NULL);
        execvp(argv[1], argv + 1);
        fprintf(stderr, "bulkhead-init: %s: %s\n", argv[1], (errno == ENOENT) ? "not found" : "cannot run");
        _exit(errno == ENOENT ? 127 : 126);
    }
    for (;;) {
        struct timespec tick = {1, 0};
        siginfo_t si;
        int sig = sigtimedwait(&all, &si, &tick);
        if (sig > 0 && sig != SIGCHLD) {
            kill(child, sig);
        }
        int status;
        pid_t p;
        while ((p = waitpid(-1, &status, WNOHANG)) > 0) {
            if (p == child) {
                return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            }
        }
    }
}
