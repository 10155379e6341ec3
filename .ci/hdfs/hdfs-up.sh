#!/usr/bin/env bash
# Start a real single-node HDFS (Apache Hadoop 2.7.3 NameNode + DataNode) from registry packages only.
# Usage: hdfs-up.sh WORKDIR      (needs: java 17, python3-venv, curl)
# Copied from the team's shared/infra/hdfs recipe, with one change: the jars (about 220 MB) are
# kept in a cache outside the clone (LSC_HDFS_JARS, default ~/.cache/lsc-hdfs-jars), so a rerun
# does not fetch them again. WebHDFS (Debian's libjersey1-*-java) is off: lsc uses the RPC client, so
# Spark's javax.ws.rs-api jar stays on the classpath for FsShell.
set -euo pipefail
W=$(realpath -m "${1:-./hdfs-work}"); mkdir -p "$W"; cd "$W"
JARS=$(realpath -m "${LSC_HDFS_JARS:-$HOME/.cache/lsc-hdfs-jars}")
if [ ! -f "$JARS/.complete" ]; then
  rm -rf "$JARS.tmp" && mkdir -p "$JARS.tmp"
  python3 -m venv "$JARS.tmp/venv" && "$JARS.tmp/venv/bin/pip" install -q wheel setuptools
  "$JARS.tmp/venv/bin/pip" download -q --no-deps --no-build-isolation -d "$JARS.tmp/dl" pyspark==2.4.8
  mkdir -p "$JARS.tmp/jars" && tar xzf "$JARS.tmp/dl/pyspark-2.4.8.tar.gz" --wildcards --strip-components=3 -C "$JARS.tmp/jars" 'pyspark-2.4.8/deps/jars/*.jar'
  rm -rf "$JARS" && mv "$JARS.tmp/jars" "$JARS" && rm -rf "$JARS.tmp" && touch "$JARS/.complete"
fi
ln -sfn "$JARS" jars
mkdir -p conf www/webapps/{hdfs,datanode,secondary,static} data
cat > conf/core-site.xml <<X
<configuration><property><name>fs.defaultFS</name><value>hdfs://127.0.0.1:${NN_PORT:-9000}</value></property>
<property><name>hadoop.tmp.dir</name><value>$W/data</value></property></configuration>
X
cat > conf/hdfs-site.xml <<X
<configuration>
<property><name>dfs.replication</name><value>1</value></property>
<property><name>dfs.namenode.name.dir</name><value>$W/data/name</value></property>
<property><name>dfs.datanode.data.dir</name><value>$W/data/dn</value></property>
<property><name>dfs.namenode.rpc-address</name><value>127.0.0.1:${NN_PORT:-9000}</value></property>
<property><name>dfs.namenode.http-address</name><value>127.0.0.1:${NN_HTTP:-50070}</value></property>
<property><name>dfs.namenode.secondary.http-address</name><value>127.0.0.1:0</value></property>
<property><name>dfs.datanode.address</name><value>127.0.0.1:${DN_PORT:-50010}</value></property>
<property><name>dfs.datanode.http.address</name><value>127.0.0.1:${DN_HTTP:-50075}</value></property>
<property><name>dfs.datanode.ipc.address</name><value>127.0.0.1:${DN_IPC:-50020}</value></property>
<property><name>dfs.datanode.hostname</name><value>127.0.0.1</value></property>
<property><name>dfs.namenode.datanode.registration.ip-hostname-check</name><value>false</value></property>
<property><name>dfs.webhdfs.enabled</name><value>false</value></property>
</configuration>
X
printf '%s\n' 'log4j.rootLogger=WARN,c' 'log4j.appender.c=org.apache.log4j.ConsoleAppender' 'log4j.appender.c.Target=System.err' \
  'log4j.appender.c.layout=org.apache.log4j.PatternLayout' 'log4j.appender.c.layout.ConversionPattern=%d{HH:mm:ss} %p %c{1}: %m%n' \
  'log4j.logger.org.apache.hadoop.hdfs.server.namenode.NameNode=INFO' 'log4j.logger.org.apache.hadoop.hdfs.server.datanode.DataNode=INFO' > conf/log4j.properties
CP="$W/conf:$W/www"
for f in jars/*.jar; do case $(basename "$f") in jersey-*2.22*|spark-*|scala-*|hive-*|parquet-*|orc-*|arrow-*|breeze*|mesos-*|kubernetes-*|py4j*) ;; *) CP="$CP:$W/$f";; esac; done
for j in jersey1-core jersey1-server jersey1-servlet jersey1-json jsr311-api; do [ -f /usr/share/java/$j.jar ] && CP="$CP:/usr/share/java/$j.jar"; done
echo "$CP" > classpath.txt
JOPTS="-Xmx${HDFS_HEAP:-256m} -XX:+UseSerialGC -XX:TieredStopAtLevel=1"
[ -d data/name/current ] || java $JOPTS -cp "$CP" org.apache.hadoop.hdfs.server.namenode.NameNode -format -force -nonInteractive > format.log 2>&1
nohup java $JOPTS -cp "$CP" org.apache.hadoop.hdfs.server.namenode.NameNode > nn.log 2>&1 & echo $! > nn.pid
nohup java $JOPTS -cp "$CP" org.apache.hadoop.hdfs.server.datanode.DataNode > dn.log 2>&1 & echo $! > dn.pid
# ready when the NameNode reports one live DataNode
for i in $(seq 1 240); do
  if curl -sf "http://127.0.0.1:${NN_HTTP:-50070}/jmx?qry=Hadoop:service=NameNode,name=FSNamesystemState" 2>/dev/null | grep -q '"NumLiveDataNodes" : 1'; then echo "HDFS ready"; exit 0; fi
  sleep 0.5
done
echo "HDFS did not come up" >&2; tail -20 nn.log dn.log >&2; exit 1
