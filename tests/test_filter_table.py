"""One filter table per process: the same filters, parsed the same way, as Thumbor's own."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import thumbor.context
from thumbor.config import Config
from thumbor.context import Context
from thumbor.filters import PHASE_POST_TRANSFORM, FiltersFactory
from thumbor.importer import Importer

from tests.fakes.rekognition import FakeRekognition
from tests.pictures import busy
from tests.servers import STOCK_HANDLER_LISTS, ThumborServer, base_config, stock_config
from thumbor_rekognition import filter_table
from thumbor_rekognition.filter_table import share_filter_tables, shared_filters_factory

# Filters with numbers, negative numbers, several parameters, one Thumbor does not know,
# and the format change, parsed from one URL.
FILTERS = "filters:brightness(10):contrast(-5):rgb(10,-10,0):no_such_filter(1):format(png)"


@pytest.fixture
def importer() -> Importer:
    config = Config()
    importer = Importer(config)
    importer.import_modules()
    return importer


@pytest.fixture
def shared() -> Iterator[None]:
    built = thumbor.context.FiltersFactory
    share_filter_tables()
    yield
    thumbor.context.FiltersFactory = built


def test_contexts_built_with_the_same_filters_share_one_table(
    importer: Importer, shared: None
) -> None:
    first = Context(config=importer.config, importer=importer)
    second = Context(config=importer.config, importer=importer)
    assert first.filters_factory is second.filters_factory
    assert isinstance(first.filters_factory, FiltersFactory)
    assert set(first.filters_factory.filter_classes_map) == {
        cls.pre_compile() for cls in importer.filters
    }


def test_each_request_still_gets_filter_objects_of_its_own(
    importer: Importer, shared: None
) -> None:
    first = Context(config=importer.config, importer=importer)
    second = Context(config=importer.config, importer=importer)
    runner = first.filters_factory.create_instances(first, "brightness(10):contrast(-5)")
    other = second.filters_factory.create_instances(second, "brightness(20)")
    mine = runner.filter_instances[PHASE_POST_TRANSFORM]
    theirs = other.filter_instances[PHASE_POST_TRANSFORM]
    assert [(type(f).__module__, f.params) for f in mine] == [
        ("thumbor.filters.brightness", [10]),
        ("thumbor.filters.contrast", [-5]),
    ]
    assert [f.params for f in theirs] == [[20]]
    assert mine[0].context is first
    assert theirs[0].context is second


def test_other_filter_lists_get_tables_of_their_own(importer: Importer) -> None:
    everything = shared_filters_factory(importer.filters)
    fewer = shared_filters_factory(importer.filters[:2])
    assert everything is shared_filters_factory(list(importer.filters))
    assert fewer is not everything
    assert len(fewer.filter_classes_map) == 2


def _picture(images: Path) -> str:
    buffer = io.BytesIO()
    busy("filters").save(buffer, "JPEG", quality=90)
    (images / "busy.jpg").write_bytes(buffer.getvalue())
    return "busy.jpg"


@pytest.mark.e2e
def test_filtered_results_are_the_same_bytes_with_one_table_per_process(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    name = _picture(images)
    path = f"/unsafe/200x150/{FILTERS}/{name}"
    with FakeRekognition() as fake:
        servers = [
            ThumborServer(
                tmp_path / "stock", stock_config(tmp_path / "stock", images, STOCK_HANDLER_LISTS)
            ),
            ThumborServer(
                tmp_path / "shared",
                stock_config(
                    tmp_path / "shared",
                    images,
                    [*STOCK_HANDLER_LISTS, filter_table.__name__],
                ),
            ),
            ThumborServer(tmp_path / "gate", base_config(tmp_path / "gate", images, fake.url)),
        ]
        try:
            bodies = []
            for server in servers:
                server.start()
                # The second request of each is served from its result storage.
                for _ in range(2):
                    response = server.get(path)
                    assert response.status == 200, server.log()
                    assert response.header("Content-Type") == "image/png"
                    bodies.append(response.body)
        finally:
            for server in servers:
                server.stop()
    assert len(set(bodies)) == 1
