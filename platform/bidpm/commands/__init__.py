"""One module per job: ``main(argv)`` parses the arguments and calls one library function.

``bidpm JOB`` (the console command) and ``jobs/JOB.py`` (what ``ray job submit`` runs from a checkout)
both run ``bidpm.commands.JOB.main``. Heavy imports (Ray, MLflow, torch) happen after argument parsing,
so ``--help`` and usage errors are instant.
"""
