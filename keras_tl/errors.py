"""Errors a person can fix. The CLIs print their message as one line and exit with status 2."""


class UserError(ValueError):
    """Bad input (recipe, data, weights, workdir): the message names the culprit and the fix."""


class WeightsError(UserError):
    """Requested weights cannot be provided; never answered by falling back to random init."""


class DataError(UserError):
    """The data cannot be read as the recipe describes."""


class WorkdirError(UserError):
    """The run directory cannot be used (finished run, unwritable, too little disk)."""
