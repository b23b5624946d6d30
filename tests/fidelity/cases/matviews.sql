-- materialized views with data, without data, one on another, with an index
CREATE TABLE sales (id int, region text, amount numeric);
INSERT INTO sales SELECT i, 'r' || (i % 10), i FROM generate_series(1, 2000) i;
CREATE MATERIALIZED VIEW sales_by_region AS SELECT region, sum(amount) AS total FROM sales GROUP BY region;
CREATE UNIQUE INDEX sales_by_region_key ON sales_by_region (region);
CREATE MATERIALIZED VIEW sales_top AS SELECT * FROM sales_by_region WHERE total > 100 WITH DATA;
CREATE MATERIALIZED VIEW sales_later AS SELECT region, count(*) FROM sales GROUP BY region WITH NO DATA;
