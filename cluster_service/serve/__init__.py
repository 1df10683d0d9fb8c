"""The concept service: new text in, the run's concept of each of its words out (Ray Serve, or offline).

``service`` holds what is answered, ``encoder`` and ``index`` the two halves of an answer (the run's
model, the concept index of each layer and K), ``schema`` the request checks and bodies, ``app`` the
Serve deployments, ``run`` starting and stopping them, ``config`` the flags.
"""
