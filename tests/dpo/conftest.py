import pytest
from accelerate import Accelerator


@pytest.fixture
def accelerator() -> Accelerator:
    return Accelerator(cpu=True)
