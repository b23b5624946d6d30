-- arrays: multi-dimensional, non-default lower bounds, NULL elements, arrays of text with quotes and commas
CREATE TABLE matrices (id int PRIMARY KEY, m int[][], lb int[], t text[], j jsonb[]);
INSERT INTO matrices SELECT i, ARRAY[[i, i + 1], [NULL, i * 2]], '[0:2]={1,2,3}'::int[],
  ARRAY['a,b', 'quote "q"', NULL, 'back\slash', ''], ARRAY['{"a": 1}'::jsonb, 'null'::jsonb] FROM generate_series(1, 300) i;
